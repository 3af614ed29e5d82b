#!/usr/bin/env python
"""The networks' activation (leaky ReLU) forward and gradient, float32 against bfloat16, on CPU.

    python scripts/benchmark_activation.py                     # [192, 32, 32, 32], 2 threads
    python scripts/benchmark_activation.py --shape=64,16,16,64 --threads=0

Times each op from a traced run (kernel time only: inputs sit in variables of the dtype, so no
cast is timed), the gradient both as TensorFlow's LeakyReluGrad kernel ("before") and as the same
op compiled by XLA inside layers.bfloat16_gradients() ("after", what --precision=mixed uses on
CPU; XLA's launch ops, _XlaCompile and _XlaRun, counted), checks that the two gradients agree bit
for bit, and prints the medians and the bfloat16 / float32 ratios. These are generic CPU kernels,
so it runs on any CPU, with or without bfloat16 instructions.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import numpy as np
import tensorflow.compat.v1 as tf
from absl import app, flags

from libml import layers
from libml.utils import UserError, cli_main, quiet_native_logs

flags.DEFINE_string('shape', '192,32,32,32', 'Activation shape (NHWC): the WRN-28-2 step\'s '
                    'first-scale activations are 3 x 64 images of 32x32x32.')
flags.DEFINE_float('alpha', 0.1, 'Leaky ReLU slope (0.1 in the ResNets).')
flags.DEFINE_integer('threads', 2, 'Intra-op threads (0: TensorFlow\'s default, one per core).')
flags.DEFINE_integer('runs', 15, 'Timed runs; the median is printed.')
flags.DEFINE_integer('warmup', 3, 'Untimed runs first.')
FLAGS = flags.FLAGS

DTYPES = (tf.float32, tf.bfloat16)
ROWS = (('forward', 'LeakyRelu'), ('gradient before', 'LeakyReluGrad'),
        ('gradient after', 'LeakyReluGrad by XLA'))
XLA_LAUNCH = 'cluster_'  # XLA names its launch ops by the cluster, not by the ops compiled


def parse_shape(text):
    try:
        shape = [int(d) for d in text.split(',')]
    except ValueError:
        shape = []
    if not shape or min(shape) < 1:
        raise UserError('--shape=%s: give positive sizes separated by commas, e.g. 192,32,32,32'
                        % text)
    return shape


def ratio(a, b):
    return a / b if b else float('nan')  # a kernel too short for the trace's microseconds


def new_ops(graph, before):
    """Names of the ops added to `graph` since `before` (a set of names)."""
    return set(op.name for op in graph.get_operations()) - before


class Timing(object):
    """One dtype's graph: the forward and both gradients of the same inputs, each timed alone."""

    def __init__(self, dtype, features, upstream, alpha, threads):
        self.graph = tf.Graph()
        with self.graph.as_default():
            x = tf.Variable(tf.cast(features, dtype))
            # A fresh upstream gradient each run, as in a train step: ops may reuse its buffer.
            g = 2 * tf.Variable(tf.cast(upstream, dtype))
            known = set(op.name for op in self.graph.get_operations())
            y = layers.leaky_relu(x, alpha)
            forward = new_ops(self.graph, known)
            known |= forward
            before = tf.gradients(y, x, grad_ys=g)[0]
            slow = new_ops(self.graph, known)
            known |= slow
            with layers.bfloat16_gradients():
                y_fast = layers.leaky_relu(x, alpha)
            known.add(y_fast.op.name)
            after = tf.gradients(y_fast, x, grad_ys=g)[0]
            fast = new_ops(self.graph, known)
            # Fetch a scalar of each result, so the timed op is not the fetch's copy.
            self.parts = [(forward, tf.reduce_sum(tf.cast(y, tf.float32))),
                          (slow, tf.reduce_sum(tf.cast(before, tf.float32))),
                          (fast, tf.reduce_sum(tf.cast(after, tf.float32)))]
            self.equal = tf.reduce_all(tf.equal(before, after))
            self.kinds = [sorted(set(op.type for op in self.graph.get_operations()
                                     if op.name in names and op.type != 'Const'))
                          for names, _ in self.parts]
            init = tf.global_variables_initializer()
        config = tf.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
        self.session = tf.Session(graph=self.graph, config=config)
        self.session.run(init)

    def op_seconds(self, names, fetch):
        """Kernel time of the ops `names` in one traced run of `fetch`."""
        metadata = tf.RunMetadata()
        self.session.run(fetch, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
                         run_metadata=metadata)
        return sum(node.all_end_rel_micros * 1e-6 for device in metadata.step_stats.dev_stats
                   if '/host:' not in device.device  # TF 1.15 lists XLA's ops twice
                   for node in device.node_stats
                   if node.node_name in names or node.node_name.startswith(XLA_LAUNCH))

    def medians(self, runs, warmup):
        """Median seconds of the forward, the gradient before and the gradient after."""
        result = []
        for names, fetch in self.parts:
            for _ in range(warmup):
                self.session.run(fetch)
            result.append(float(np.median([self.op_seconds(names, fetch) for _ in range(runs)])))
        return result


def main(argv):
    del argv
    shape = parse_shape(FLAGS.shape)
    rng = np.random.RandomState(0)
    features = rng.randn(*shape).astype(np.float32)
    upstream = rng.randn(*shape).astype(np.float32)
    threads = FLAGS.threads or os.cpu_count()
    print('leaky ReLU (alpha=%g) on %s, %d threads, %d CPU cores; median op time of %d traced runs'
          % (FLAGS.alpha, shape, threads, os.cpu_count(), FLAGS.runs))
    times = {}
    for dtype in DTYPES:
        timing = Timing(dtype, features, upstream, FLAGS.alpha, threads)
        times[dtype] = timing.medians(FLAGS.runs, FLAGS.warmup)
        same = timing.session.run(timing.equal)
        print('%-8s gradient after == before, bit for bit: %s   (ops: %s)' % (
            dtype.name, 'yes' if same else 'NO', ' | '.join(', '.join(k) for k in timing.kinds)))
    print('%-38s %10s %10s %11s' % ('', 'float32', 'bfloat16', 'bf16 / fp32'))
    for i, (row, ops) in enumerate(ROWS):
        fp32, bf16 = times[tf.float32][i], times[tf.bfloat16][i]
        print('%-38s %7.2f ms %7.2f ms %10.2fx' % ('%s (%s)' % (row, ops), fp32 * 1e3, bf16 * 1e3,
                                                    ratio(bf16, fp32)))
    print('gradient after in bfloat16 / gradient before in float32: %.2fx'
          % ratio(times[tf.bfloat16][2], times[tf.float32][1]))


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
