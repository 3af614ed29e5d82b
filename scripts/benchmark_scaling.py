#!/usr/bin/env python
"""Data-parallel scaling on this machine: N worker processes against one, same per-replica batch.

    python scripts/benchmark_scaling.py [--workers=2] [--threads=1] [--steps=20] [--warmup=5]
        [--repeats=3] [--dataset=ID] [--arch=resnet --filters=16 --repeat=1 --batch=64 ...]

The driver (the default --role) times, --repeats times and alternating so that a change in machine
load hits each: (a) one worker process (no TF_CONFIG), (b) --workers processes started through
scripts/launch.py (TF_CONFIG, MultiWorkerMirroredStrategy) and, with --pin, (c) --workers single
workers at once, pinned alike but never talking, that start timing together and keep stepping
until all are done (--sync_dir): the ceiling this machine allows (shared caches and memory
bandwidth slow each core's kernels once every core works). Every process is this script with
--role=worker: the library's train step (train.training_graph, the device's session with
--threads intra- and inter-op threads), --warmup untimed steps, then --steps timed ones; rank 0
prints `SCALING_RESULT {"img_per_s": X, "replicas": R, "steps_ms": [...]}`, X being global labeled
images per second (the global step counts them). The driver prints the medians and the ratio
N-worker / 1-worker global img/s (ideal N, goal 0.9 N); what the independent workers' own step
times would cost in lockstep, where each step waits for the slowest (the expected slowest of a
draw of one step from each, against their mean step; the ceiling divided by it is the best a
synchronous run could do here); then the split of one traced step (the one of median length of
--trace_steps traced after the timed ones) of one worker, of rank 0 and of the first independent
worker: computation (the span of the step's kernels but the collectives), collectives (their
wall-clock union, waiting for the other workers included) and session (the rest of the run call's
wall time). Without --dataset it writes a synthetic 32x32 dataset
to a temporary folder (removed after a successful measurement). Defaults: a small Wide ResNet
(--filters=16 --repeat=1), batch 64 per replica. Every realmix.py hyperparameter flag is accepted
but --device, --precision, --replicas and --iterations_per_loop: the workers run on the CPU in
fp32, one replica each. A measurement, not a test: a missed goal still exits 0; bad flags or a
failed worker are one `error:` line and exit 1 (the workers' logs are kept then).
"""

import glob
import json
import os
import re
import shutil
import signal
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
flags.DEFINE_integer('core', -1, 'Worker: the core to pin to (-1: its rank\'s); the driver sets it '
                     'for the independent runs.')
flags.DEFINE_integer('steps', 20, 'Timed steps per run.')
flags.DEFINE_integer('warmup', 5, 'Untimed steps before timing.')
flags.DEFINE_integer('repeats', 3, 'Runs of each setting; the median is reported.')
flags.DEFINE_integer('trace_steps', 3, 'Steps traced after the timed ones, for the split of a step '
                     'between computation, collectives and the session (0: none).')
flags.DEFINE_string('sync_dir', '', 'Worker: a folder through which independent workers start timing '
                    'together and keep stepping until every one has finished (the driver sets it), '
                    'so that their timed and traced steps overlap.')
flags.DEFINE_integer('run_timeout', 900, 'Seconds one run may take before it counts as failed.')
FLAGS = flags.FLAGS

# Small enough that one run takes well under a minute on 2 cores at 1 thread per worker.
DEFAULTS = dict(arch='resnet', filters=16, repeat=1, batch=64)
RESULT = 'SCALING_RESULT'
LAUNCH = os.path.join(ROOT, 'scripts', 'launch.py')
FIXED = ('device', 'precision', 'replicas', 'iterations_per_loop')  # the workers' own settings
# Besides the hyperparameters.
PASSED_FLAGS = ('method', 'threads', 'steps', 'warmup', 'pin', 'trace_steps')
# Kernels that move data between workers (TF 1.15's CollectiveReduce, TF 2.x's V2 and later).
COLLECTIVE_OPS = re.compile(r'^Collective(Reduce|Gather|Bcast)')


def worker():
    """One timed process: rank 0 prints the SCALING_RESULT line."""
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    if FLAGS.pin and hasattr(os, 'sched_setaffinity'):
        core = FLAGS.core if FLAGS.core >= 0 else device.cluster.rank
        os.sched_setaffinity(0, {core % os.cpu_count()})
    dataset = data.resolve(FLAGS.dataset)
    method = methods.get(FLAGS.method)
    hp = hparams.from_flags(FLAGS, FLAGS.method, methods.flag_specs(FLAGS.method), dataset,
                            device.cluster.replicas)
    with tf.Graph().as_default() as graph:
        ops = train.training_graph(dataset, hp, device, method, seed=1)
        init = tf.global_variables_initializer()
        with device.session(graph, threads=FLAGS.threads) as session:
            session.run(init)
            if ops['broadcast'] is not None:  # rank 0's initial weights, as a run starts
                session.run(ops['broadcast'])
            for _ in range(FLAGS.warmup):
                session.run(ops['train_op'])
            reach(FLAGS.sync_dir, 'ready', FLAGS.core, FLAGS.workers)
            first = session.run(ops['step'])
            durations = []
            for _ in range(FLAGS.steps):
                start = time.time()
                session.run(ops['train_op'])
                durations.append(time.time() - start)
            seconds = sum(durations)
            images = session.run(ops['step']) - first  # the global step counts global images
            split = [traced_step(session, ops['train_op']) for _ in range(FLAGS.trace_steps)]
            reach(FLAGS.sync_dir, 'done', FLAGS.core, FLAGS.workers,
                  while_waiting=lambda: session.run(ops['train_op']))  # the load the others measure
            session.run(ops['barrier'])
    if device.chief:
        result = {'img_per_s': float(images) / seconds, 'replicas': device.cluster.replicas,
                  'steps_ms': [round(d * 1e3, 2) for d in durations]}
        if split:  # milliseconds: the traced step of median length, whose parts add up to it
            result.update(zip(SPLIT, median_step(split)))
        print('%s %s' % (RESULT, json.dumps(result)), flush=True)
    device.leave()


def reach(sync_dir, stage, worker_id, workers, while_waiting=lambda: time.sleep(0.01)):
    """Mark `stage` reached by this independent worker and wait until all `workers` have
    reached it (nothing without a sync_dir: a run's workers move in lockstep anyway)."""
    if not sync_dir:
        return
    with open(os.path.join(sync_dir, '%s-%d' % (stage, worker_id)), 'w'):
        pass
    while len(glob.glob(os.path.join(sync_dir, stage + '-*'))) < workers:
        while_waiting()


SPLIT = ('step_ms', 'compute_ms', 'collective_ms', 'session_ms')


def traced_step(session, train_op):
    """One step traced: (wall, computation, collectives, session) in ms. Collectives are the
    wall-clock union of the collective kernels, waiting for the other workers included;
    computation the rest of the span of the step's kernels; session what lies outside it (the
    client, the master, the transfers of the run call)."""
    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    metadata = tf.RunMetadata()
    start = time.time()
    session.run(train_op, options=options, run_metadata=metadata)
    wall_ms = (time.time() - start) * 1e3
    spans, collective = [], []
    for device_stats in metadata.step_stats.dev_stats:
        for node in device_stats.node_stats:
            span = (node.all_start_micros, node.all_start_micros + node.all_end_rel_micros)
            spans.append(span)
            kernel = node.timeline_label.partition(' = ')[2]
            if COLLECTIVE_OPS.match(kernel):
                collective.append(span)
    graph_ms = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e3 if spans else 0.
    collective_ms = union_length(collective) / 1e3
    return wall_ms, graph_ms - collective_ms, collective_ms, max(wall_ms - graph_ms, 0.)


def median_step(splits):
    """The split of the step of median wall time (the lower one of an even count): a median per
    column would not add up to the step, and one slow step would not show where its time went."""
    ordered = sorted(splits, key=lambda split: split[0])
    return list(ordered[(len(ordered) - 1) // 2])


def expected_slowest(steps):
    """The expected length of the slowest of a draw of one step from each worker's `steps` (ms
    lists): what a synchronous step would last were the workers' step times independent."""
    values = np.unique(np.concatenate([np.asarray(s, float) for s in steps]))
    # P(slowest <= v) is the product of each worker's share of steps <= v.
    below = np.prod([np.searchsorted(np.sort(s), values, side='right') / float(len(s))
                     for s in steps], axis=0)
    return float(np.sum(values * np.diff(np.concatenate([[0.], below]))))


def union_length(intervals):
    """Total length covered by (start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total, reach = total + end - start, end
        elif end > reach:
            total, reach = total + end - reach, end
    return total


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
    except subprocess.TimeoutExpired:  # killed; the launcher's workers die with it
        raise _timed_out(label)
    result = _result(proc.stdout, proc.returncode, label)
    if result['replicas'] != workers:
        raise UserError('%s ran %d replicas, expected %d' % (label, result['replicas'], workers))
    return result


def run_independent(workers, args, env, folder, label):
    """Summed img/s of `workers` single-worker processes at once, pinned like the workers of a run
    but never talking, their timed steps overlapping (--sync_dir): the most data parallelism can
    reach on this machine; and their results, in core order. One that fails stops the others."""
    script = os.path.abspath(__file__)
    sync_dir = os.path.join(folder, 'sync')
    os.makedirs(sync_dir)
    logs = [os.path.join(folder, 'worker-%d.log' % core) for core in range(workers)]
    procs = []
    for core, log in enumerate(logs):
        with open(log, 'w') as out:  # a file, not a pipe: nobody reads while they run
            procs.append(subprocess.Popen(
                [sys.executable, script, '--core=%d' % core, '--sync_dir=' + sync_dir,
                 '--workers=%d' % workers] + args, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline, timed_out = time.time() + FLAGS.run_timeout, False
    while any(proc.poll() is None for proc in procs):
        timed_out = time.time() > deadline
        if timed_out or any(proc.poll() for proc in procs):
            for proc in procs:
                proc.kill()
                proc.wait()
            break
        time.sleep(0.2)
    if timed_out:
        raise _timed_out(label)
    outputs = []
    for log in logs:
        with open(log) as f:
            outputs.append(f.read())
    # A failure's own error line first: the others were stopped because of it.
    order = sorted(range(workers), key=lambda i: procs[i].returncode == -signal.SIGKILL)
    results = {i: _result(outputs[i], procs[i].returncode, label) for i in order}
    ordered = [results[i] for i in range(workers)]
    return sum(result['img_per_s'] for result in ordered), ordered


def _timed_out(label):
    return UserError('%s timed out after %d s (--run_timeout); stopped it' % (label, FLAGS.run_timeout))


def _result(out, returncode, label):
    """The last SCALING_RESULT of a run's output; UserError when it failed or printed none."""
    results = re.findall(r'^%s (\{.*\})$' % RESULT, out, re.M)
    problem = 'exited with status %d' % returncode if returncode else None
    if problem is None and not results:
        problem = 'printed no %s line' % RESULT
    if problem is not None:
        raise UserError('%s %s: %s' % (label, problem, _last_line(out)))
    return json.loads(results[-1])


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
    for name, least in (('steps', 1), ('warmup', 0), ('repeats', 1), ('threads', 0),
                        ('trace_steps', 0)):
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
    rates, splits, independent = {1: [], n: []}, {1: [], n: [], 'independent': []}, []
    lockstep_cost = []  # per run: E[slowest independent step] / mean independent step
    for repeat in range(FLAGS.repeats):  # round-robin, so a change in machine load hits both
        for workers in (1, n):
            label = '%d-worker run %d of %d' % (workers, repeat + 1, FLAGS.repeats)
            logs = os.path.join(temp, 'logs-%d-%d' % (workers, repeat))
            result = run_once(workers, args, env, logs, label)
            rates[workers].append(result['img_per_s'])
            splits[workers].append([result[key] for key in SPLIT if key in result])
            print('  %s: %.1f img/s' % (label, result['img_per_s']), flush=True)
        if FLAGS.pin:
            label = '%d independent workers, run %d of %d' % (n, repeat + 1, FLAGS.repeats)
            folder = os.path.join(temp, 'independent-%d' % repeat)
            total, each = run_independent(n, args, env, folder, label)
            independent.append(total)
            splits['independent'].append([each[0][key] for key in SPLIT if key in each[0]])
            steps = [result['steps_ms'] for result in each]
            lockstep_cost.append(expected_slowest(steps) / np.mean(np.concatenate(steps)))
            print('  %s: %.1f img/s in all' % (label, independent[-1]), flush=True)
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
    if independent:
        ceiling = float(np.median(independent))
        print('%d independent single workers at once (no collectives): %.1f img/s in all, %.2f x one '
              '(runs: %s): the ceiling on this machine'
              % (n, ceiling, ceiling / median[1], ' '.join('%.1f' % r for r in independent)))
        cost = float(np.median(lockstep_cost))
        print('their steps vary: in lockstep each step would last the slowest of %d, %.0f %% '
              'longer than their mean step (median of runs): at best %.2f x one synchronous'
              % (n, 100 * (cost - 1), ceiling / cost / median[1]))
    if FLAGS.trace_steps:
        print('one traced step of rank 0, ms (the median step of the runs\' median steps of %d traced '
              'steps; its parts add up to it):' % FLAGS.trace_steps)
        print('                  step  computation  collectives  session')
        rows = [(1, '1 worker'), (n, '%d workers' % n), ('independent', '1 of %d indep.' % n)]
        for key, label in rows:
            if splits[key]:
                print('%-14s%8.1f     %8.1f     %8.1f  %7.1f'
                      % ((label,) + tuple(median_step(splits[key]))))
    shutil.rmtree(temp, ignore_errors=True)


def apply_defaults():
    """This benchmark's network and batch where the command line gives none: as if given (the
    hyperparameters otherwise take the method's own defaults, and the workers get them too)."""
    for name, value in DEFAULTS.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value
            FLAGS[name].present = 1


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    apply_defaults()
    if FLAGS.role == 'worker':
        worker()
    else:
        driver()


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
