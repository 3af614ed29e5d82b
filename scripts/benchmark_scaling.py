#!/usr/bin/env python
"""Data-parallel scaling on this machine: N worker processes against one, same per-replica batch.

    python scripts/benchmark_scaling.py [--workers=2] [--threads=1] [--steps=20] [--warmup=5]
        [--repeats=3] [--dataset=ID] [--arch=resnet --filters=16 --repeat=1 --batch=64 ...]

The driver (the default --role) times, --repeats times and alternating so that a change in machine
load hits both: (a) one worker process (no TF_CONFIG) and (b) --workers processes started through
scripts/launch.py (TF_CONFIG, MultiWorkerMirroredStrategy). Every process is this script with
--role=worker: the library's train step (train.training_graph, the device's
session with --threads intra- and inter-op threads), --warmup untimed steps, then --steps timed
ones; rank 0 prints `SCALING_RESULT {"img_per_s": X, "replicas": R}`, X being global labeled images
per second (the global step counts them). The driver prints the medians and the ratio N-worker /
1-worker global img/s (ideal N, goal 0.9 N). Without --dataset it writes a synthetic 32x32 dataset
to a temporary folder (removed after a successful measurement). Defaults: a small Wide ResNet
(--filters=16 --repeat=1), batch 64 per replica. Every realmix.py hyperparameter flag is accepted
but --device, --precision, --replicas and --iterations_per_loop: the workers run on the CPU in
fp32, one replica each. A measurement, not a test: a missed goal still exits 0; bad flags or a
failed worker are one `error:` line and exit 1 (the workers' logs are kept then).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import methods  # noqa: E402
from libml import data, hparams, npu_config, records, train  # noqa: E402
from libml.utils import UserError, cli_main, quiet_native_logs  # noqa: E402

hparams.define_flags(flags, hparams.COMMON_FLAGS + methods.all_flags())
flags.DEFINE_enum('method', 'realmix', methods.names(), 'The method whose train step is timed.')
flags.DEFINE_enum('role', 'driver', ['driver', 'worker'], 'driver: start the runs and print the '
                  'table; worker: one timed process (the driver starts these itself).')
flags.DEFINE_integer('workers', 2, 'Worker processes of the data-parallel run (>= 2).')
flags.DEFINE_integer('threads', 1, 'Intra- and inter-op threads of each worker\'s session '
                     '(0: TensorFlow\'s default).')
flags.DEFINE_bool('pin', True, 'Pin worker of rank r to CPU core r (Linux): a "thread" then means one '
                  'core, tf.data and oneDNN included; without it one worker already spreads over '
                  'every core.')
flags.DEFINE_integer('steps', 20, 'Timed steps per run.')
flags.DEFINE_integer('warmup', 5, 'Untimed steps before timing.')
flags.DEFINE_integer('repeats', 3, 'Runs of each setting; the median is reported.')
flags.DEFINE_integer('run_timeout', 900, 'Seconds one run may take before it counts as failed.')
FLAGS = flags.FLAGS

# Small enough that one run takes well under a minute on 2 cores at 1 thread per worker.
DEFAULTS = dict(arch='resnet', filters=16, repeat=1, batch=64)
RESULT = 'SCALING_RESULT'
LAUNCH = os.path.join(ROOT, 'scripts', 'launch.py')
FIXED = ('device', 'precision', 'replicas', 'iterations_per_loop')  # the workers' own settings
PASSED_FLAGS = ('method', 'threads', 'steps', 'warmup', 'pin')  # besides the hyperparameters


def worker():
    """One timed process: rank 0 prints the SCALING_RESULT line."""
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    if FLAGS.pin and hasattr(os, 'sched_setaffinity'):
        os.sched_setaffinity(0, {device.cluster.rank % os.cpu_count()})
    dataset = data.resolve(FLAGS.dataset)
    method = methods.get(FLAGS.method)
    hp = hparams.from_flags(FLAGS, FLAGS.method, methods.flag_specs(FLAGS.method), dataset,
                            device.cluster.replicas)
    with tf.Graph().as_default() as graph:
        ops = train.training_graph(dataset, hp, device, method, seed=1)
        init = tf.global_variables_initializer()
        with device.session(graph, threads=FLAGS.threads) as session:
            session.run(init)
            for _ in range(FLAGS.warmup):
                session.run(ops['train_op'])
            first = session.run(ops['step'])
            start = time.time()
            for _ in range(FLAGS.steps):
                session.run(ops['train_op'])
            seconds = time.time() - start
            images = session.run(ops['step']) - first  # the global step counts global images
            session.run(ops['barrier'])
    if device.chief:
        print('%s %s' % (RESULT, json.dumps({'img_per_s': float(images) / seconds,
                                             'replicas': device.cluster.replicas})), flush=True)
    device.leave()


# --- driver -----------------------------------------------------------------------------------

def cpu_model(path='/proc/cpuinfo'):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except (IOError, OSError):
        pass
    return 'unknown CPU'


def worker_args(dataset_id):
    """This script's flags for a worker: the hyperparameters given and the timing (the workers
    share this script's defaults)."""
    args = ['--role=worker', '--dataset=' + dataset_id]
    for spec in hparams.COMMON_FLAGS + methods.all_flags():
        if spec.name not in ('dataset',) + FIXED and FLAGS[spec.name].present:
            args.append(FLAGS[spec.name].serialize())
    return args + [FLAGS[name].serialize() for name in PASSED_FLAGS]


def run_once(workers, args, env, log_dir, label):
    """Global img/s of one run of `workers` processes (one: started directly, no TF_CONFIG)."""
    script = os.path.abspath(__file__)
    if workers == 1:
        command = [sys.executable, script] + args
    else:
        command = [sys.executable, LAUNCH, '--workers=%d' % workers, '--log_dir=' + log_dir,
                   script] + args
    try:
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=FLAGS.run_timeout)
        out = proc.stdout
        problem = 'exited with status %d' % proc.returncode if proc.returncode else None
    except subprocess.TimeoutExpired:  # killed; the launcher's workers die with it
        raise UserError('%s timed out after %d s (--run_timeout); stopped it'
                        % (label, FLAGS.run_timeout))
    results = re.findall(r'^%s (\{.*\})$' % RESULT, out, re.M)
    if problem is None and not results:
        problem = 'printed no %s line' % RESULT
    if problem is not None:
        raise UserError('%s %s: %s' % (label, problem, _last_line(out)))
    result = json.loads(results[-1])
    if result['replicas'] != workers:
        raise UserError('%s ran %d replicas, expected %d' % (label, result['replicas'], workers))
    return result['img_per_s']


def _last_line(text):
    lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error:')]
    return (errors or lines or ['no output'])[-1]


def driver():
    if FLAGS.workers < 2:
        raise UserError('--workers=%d: give 2 or more (1 worker is the baseline it is compared '
                        'against)' % FLAGS.workers)
    for name in FIXED:
        if FLAGS[name].present:
            raise UserError('--%s: this benchmark runs every worker on the CPU in fp32, one '
                            'replica each' % name)
    for name, least in (('steps', 1), ('warmup', 0), ('repeats', 1), ('threads', 0)):
        if FLAGS[name].value < least:
            raise UserError('--%s=%d: give %d or more' % (name, FLAGS[name].value, least))
    temp = tempfile.mkdtemp(prefix='realmix-scaling-')
    dataset_id = FLAGS.dataset
    if not FLAGS['dataset'].present:
        os.environ['ML_DATA'] = os.path.join(temp, 'data')
        dataset_id = records.write_synthetic_dataset(os.environ['ML_DATA'])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2')  # CPU workers
    env.pop('TF_CONFIG', None)
    dataset = data.resolve(dataset_id)  # a missing dataset is one error line here, not per worker
    hp = hparams.from_flags(FLAGS, FLAGS.method, methods.flag_specs(FLAGS.method), dataset)
    args = worker_args(dataset_id)
    n = FLAGS.workers
    threads = '%d thread%s' % (FLAGS.threads, 's' if FLAGS.threads > 1 else '') \
        if FLAGS.threads else 'default threads'
    print('%s scaling: %s, arch=%s filters=%d repeat=%d scales=%d, batch %d per replica'
          % (FLAGS.method, dataset_id, hp['arch'], hp['filters'], hp['repeat'], hp['scales'],
             hp['batch']), flush=True)
    rates = {1: [], n: []}
    for repeat in range(FLAGS.repeats):  # round-robin, so a change in machine load hits both
        for workers in (1, n):
            label = '%d-worker run %d of %d' % (workers, repeat + 1, FLAGS.repeats)
            logs = os.path.join(temp, 'logs-%d-%d' % (workers, repeat))
            rate = run_once(workers, args, env, logs, label)
            rates[workers].append(rate)
            print('  %s: %.1f img/s' % (label, rate), flush=True)
    median = dict((w, float(np.median(r))) for w, r in rates.items())
    cflags = npu_config.cpu_flags()
    print()
    print('machine: %d CPU cores, %s (%s), TensorFlow %s, %s per worker'
          % (os.cpu_count(), cpu_model(), 'AVX-512' if 'avx512f' in cflags else 'no AVX-512',
             tf.VERSION, threads))
    print('median of %d runs x %d timed steps after %d warm-up steps; global labeled img/s'
          % (FLAGS.repeats, FLAGS.steps, FLAGS.warmup))
    for workers in (1, n):
        print('%d worker%s x %s  %8.1f img/s   (runs: %s)'
              % (workers, 's' if workers > 1 else ' ', threads, median[workers],
                 ' '.join('%.1f' % r for r in rates[workers])))
    ratio = median[n] / median[1]
    goal = 0.9 * n
    print('ratio %d workers / 1 worker = %.2f   (ideal %.2f, goal >= %.2f: %s)'
          % (n, ratio, float(n), goal, 'met' if ratio >= goal else 'missed'))
    shutil.rmtree(temp, ignore_errors=True)


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    if FLAGS.role == 'worker':
        worker()
    else:
        driver()


if __name__ == '__main__':
    for name, value in DEFAULTS.items():
        FLAGS.set_default(name, value)
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
