#!/usr/bin/env python
"""Training speed in labeled img/s: the full pipeline against the bare train op on constant inputs.

    python scripts/benchmark.py --dataset=cifar10.1@4000-0 --precision=fp32,mixed
    python scripts/benchmark.py --precisions=fp32,mixed --profile=/tmp/profile   # where a step goes

Without --dataset it writes a synthetic 32x32 RGB dataset to a temporary folder. Each setting is
timed --repeats times for --steps steps after --warmup steps; the medians are printed.
"""

import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import numpy as np
import tensorflow.compat.v1 as tf
from absl import app, flags

import methods
from libml import data, hparams, npu_config, records
from libml.graph import build_graph
from libml.utils import atomic_output, cli_main, quiet_native_logs

hparams.define_flags(flags, hparams.COMMON_FLAGS + methods.all_flags())
flags.DEFINE_enum('method', 'realmix', methods.names(), 'The method whose train step is timed.')
flags.DEFINE_string('modes', 'pipeline,constant', 'pipeline (tf.data input, EMA, weight decay) and/or '
                    'constant (the same train op fed with constant in-graph tensors).')
flags.DEFINE_string('precisions', 'fp32', 'Comma-separated precisions to time.')
flags.DEFINE_integer('steps', 20, 'Timed steps per repeat.')
flags.DEFINE_integer('warmup', 5, 'Untimed steps before timing.')
flags.DEFINE_integer('repeats', 3, 'Timed repeats; the median is reported.')
flags.DEFINE_string('profile', '', 'Folder: trace one step of each setting (chrome://tracing or '
                    'Perfetto JSON, PRECISION_MODE.trace.json) and print its ten costliest op types.')
FLAGS = flags.FLAGS


def constant_inputs(labeled, unlabeled):
    """One real batch of each pipeline (None stays None), frozen into in-graph constants."""
    with tf.Session() as session:
        values = session.run([labeled, unlabeled or {}])
    frozen = [{k: tf.constant(v) for k, v in value.items()} for value in values]
    return frozen[0], frozen[1] if unlabeled is not None else None


class Setting(object):
    """One precision and input mode: its own graph and session, ready to time train steps."""

    def __init__(self, dataset, hp, method, precision, mode):
        self.name = '%-8s %-9s' % (precision, mode)
        self.batch = hp['batch']
        device = npu_config.setup(FLAGS.device, precision, log=lambda *a: None)
        self.described = device.describe()
        graph = tf.Graph()
        with graph.as_default():
            labeled = data.batches(data.labeled_pipeline(dataset, hp['batch'], hp['augment']))
            unlabeled = None
            if method.NEEDS_UNLABELED:
                unlabeled = data.batches(data.unlabeled_pipeline(
                    dataset, methods.unlabeled_batch(method, hp), hp['augment'],
                    views=methods.unlabeled_views(method)))
            if mode == 'constant':
                labeled, unlabeled = constant_inputs(labeled, unlabeled)
            self.train_op = build_graph(hp, dataset.shape, dataset.nclass, device, method,
                                        pipelines=[(labeled, unlabeled)])['train_op']
            init = tf.global_variables_initializer()
        self.session = tf.Session(graph=graph, config=device.session_config())
        self.session.run(init)
        self.run(FLAGS.warmup)
        self.rates = []

    def run(self, steps):
        for _ in range(steps):
            self.session.run(self.train_op)

    def time(self, steps):
        start = time.time()
        self.run(steps)
        self.rates.append(steps * self.batch / (time.time() - start))

    def profile(self, folder):
        """Trace one step: write the chrome trace; return [(op type, seconds)] by cost."""
        from tensorflow.python.client import timeline
        options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
        metadata = tf.RunMetadata()
        self.session.run(self.train_op, options=options, run_metadata=metadata)
        trace = timeline.Timeline(metadata.step_stats).generate_chrome_trace_format()
        path = os.path.join(folder, '%s.trace.json' % '_'.join(self.name.split()))
        with atomic_output(path) as tmp:
            with open(tmp, 'w') as f:
                f.write(trace)
        return op_type_costs(json.loads(trace)), path


def op_type_costs(trace):
    """Kernel time per op type in a chrome trace of one step, costliest first.

    The type is the kernel that ran, as the trace names it: after grappler's and oneDNN's
    rewrites (_MklNativeFusedConv2D for a convolution fused with its bias and residual add).
    """
    costs = collections.Counter()
    for event in trace['traceEvents']:
        if event.get('ph') == 'X' and event.get('cat') == 'Op':
            costs[event['args']['op']] += event['dur'] * 1e-6
    return costs.most_common()


def print_profile(setting, costs, path, top=10):
    total = sum(seconds for _, seconds in costs) or 1.
    print('%s: one step traced to %s; op time %.1f ms (summed over threads); top %d op types:'
          % (setting.name.strip(), path, total * 1e3, top))
    for kind, seconds in costs[:top]:
        print('  %-32s %8.2f ms  %5.1f %%' % (kind, seconds * 1e3, 100 * seconds / total))


def main(argv):
    del argv
    dataset_id = FLAGS.dataset
    if not FLAGS['dataset'].present:
        os.environ['ML_DATA'] = tempfile.mkdtemp(prefix='realmix-bench-')
        dataset_id = records.write_synthetic_dataset(os.environ['ML_DATA'])
    dataset = data.resolve(dataset_id)
    specs = methods.flag_specs(FLAGS.method)
    hp = hparams.from_flags(FLAGS, FLAGS.method, specs, dataset)
    method = methods.get(FLAGS.method)
    print('%s, arch=%s filters=%d repeat=%d scales=%d batch=%d, %d CPU cores'
          % (dataset_id, hp['arch'], hp['filters'], hp['repeat'], hp['scales'], hp['batch'],
             os.cpu_count()))
    settings = [Setting(dataset, hp, method, precision, mode) for precision in FLAGS.precisions.split(',')
                for mode in FLAGS.modes.split(',')]
    for _ in range(FLAGS.repeats):  # Round-robin, so a change in machine load hits every setting.
        for setting in settings:
            setting.time(FLAGS.steps)
    results = {}
    for setting in settings:
        rate = float(np.median(setting.rates))
        results[tuple(setting.name.split())] = rate
        print('%s %8.1f img/s   (%s; median of %d x %d steps; runs: %s)'
              % (setting.name, rate, setting.described, FLAGS.repeats, FLAGS.steps,
                 ' '.join('%.1f' % r for r in setting.rates)))
    for precision in FLAGS.precisions.split(','):
        if (precision, 'pipeline') in results and (precision, 'constant') in results:
            print('%s: pipeline / constant = %.1f%%' % (
                precision, 100 * results[(precision, 'pipeline')] / results[(precision, 'constant')]))
    fp32, mixed = results.get(('fp32', 'pipeline')), results.get(('mixed', 'pipeline'))
    if fp32 and mixed:
        print('mixed / fp32 (pipeline) = %.2fx' % (mixed / fp32))
    if FLAGS.profile:
        for setting in settings:
            costs, path = setting.profile(FLAGS.profile)
            print_profile(setting, costs, path)


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
