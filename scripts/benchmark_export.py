#!/usr/bin/env python
"""Inference speed of an exported frozen graph (RUN/export/realmix.pb) in images/s.

    python scripts/benchmark_export.py RUN/export [--batches=1,256] [--repeats=5]

The graph is imported with its `images` input replaced by a placeholder of each batch size (the
network has no batch-dependent constants), fed random uint8 images; each repeat runs enough
steps to take about --seconds, and the median over the repeats is printed.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from libml import export  # noqa: E402
from libml.utils import UserError, cli_main, quiet_native_logs  # noqa: E402

flags.DEFINE_string('batches', '1,256', 'Comma-separated batch sizes to time.')
flags.DEFINE_integer('repeats', 5, 'Timed repeats per batch size; the median is printed.')
flags.DEFINE_float('seconds', 0.5, 'About how long one timed repeat runs.')
flags.DEFINE_integer('warmup', 3, 'Untimed runs per batch size before timing.')
FLAGS = flags.FLAGS


def load_graph_def(export_dir):
    path = os.path.join(export_dir, export.PB_NAME)
    if not os.path.isfile(path):
        raise UserError('%s has no %s; run scripts/export.py RUN --format=pb first'
                        % (export_dir, export.PB_NAME))
    graph_def = tf.GraphDef()
    with open(path, 'rb') as f:
        graph_def.ParseFromString(f.read())
    return graph_def


def input_shape(graph_def):
    """[H, W, C] of the frozen graph's `images` placeholder."""
    for node in graph_def.node:
        if node.name == export.INPUT:
            return [d.size for d in node.attr['shape'].shape.dim][1:]
    raise UserError('the frozen graph has no %s input' % export.INPUT)


def time_batch(graph_def, batch, repeats, seconds, warmup):
    """Median images/s at one batch size, and the steps per repeat."""
    shape = [batch] + input_shape(graph_def)
    with tf.Graph().as_default() as graph:
        images = tf.placeholder(tf.uint8, shape, 'bench_images')
        probabilities, = tf.import_graph_def(graph_def, name='', input_map={export.INPUT + ':0': images},
                                             return_elements=[export.PROBABILITIES + ':0'])
        feed = {images: np.random.RandomState(0).randint(0, 256, shape).astype(np.uint8)}
        with tf.Session(graph=graph) as session:
            for _ in range(max(1, warmup)):
                start = time.time()
                session.run(probabilities, feed)
            steps = int(min(10000, max(1, np.ceil(seconds / max(time.time() - start, 1e-6)))))
            rates = []
            for _ in range(repeats):
                start = time.time()
                for _ in range(steps):
                    session.run(probabilities, feed)
                rates.append(steps * batch / (time.time() - start))
    return float(np.median(rates)), steps


def main(argv):
    if len(argv) != 2:
        raise UserError('usage: benchmark_export.py EXPORT_DIR (the folder scripts/export.py wrote)')
    graph_def = load_graph_def(argv[1])
    try:
        batches = [int(b) for b in FLAGS.batches.split(',') if b.strip()]
    except ValueError:
        raise UserError('--batches=%s: use comma-separated integers, e.g. 1,256' % FLAGS.batches)
    if not batches or min(batches) < 1 or FLAGS.repeats < 1:
        raise UserError('--batches needs sizes >= 1 and --repeats at least 1')
    print('%s: input %s uint8, TensorFlow %s' % (
        os.path.join(argv[1], export.PB_NAME), 'x'.join(str(d) for d in input_shape(graph_def)),
        tf.VERSION))
    for batch in batches:
        rate, steps = time_batch(graph_def, batch, FLAGS.repeats, FLAGS.seconds, FLAGS.warmup)
        print('batch %4d: %10.1f images/s  (median of %d runs of %d steps)'
              % (batch, rate, FLAGS.repeats, steps))


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
