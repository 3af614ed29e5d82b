#!/usr/bin/env python
"""Median test accuracy (EMA) of the last 20 evaluations of a run -> RUN_DIR/stats/accuracy.json.

    python scripts/extract_accuracy.py experiments/cifar10.1@250-500/realmix_.../
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import numpy as np
import tensorflow.compat.v1 as tf
from absl import app, flags

from libml import events
from libml.utils import UserError, cli_main, write_text_atomic

flags.DEFINE_integer('last', 20, 'Number of most recent evaluations to take the median of.')
FLAGS = flags.FLAGS
TAGS = ('accuracy/labeled', 'accuracy/valid', 'accuracy/test')


def summarize(run_dir, last):
    """Median of the last `last` EMA accuracies per subset, plus the step range they cover."""
    scalars = events.read_scalars(run_dir)
    if 'accuracy/test' not in scalars:
        raise UserError('%s has no accuracy/test summaries yet; train at least one epoch' % run_dir)
    out = {}
    for tag in TAGS:
        points = scalars.get(tag, [])[-last:]
        if points:
            out[tag.split('/')[1]] = float(np.median([v for _, v in points]))
    points = scalars['accuracy/test'][-last:]
    out.update(evaluations=len(points), first_kimg=points[0][0] / 1024., last_kimg=points[-1][0] / 1024.)
    return out


def main(argv):
    if len(argv) != 2:
        raise UserError('usage: extract_accuracy.py RUN_DIR')
    run_dir = argv[1]
    stats = summarize(run_dir, FLAGS.last)
    path = os.path.join(run_dir, 'stats', 'accuracy.json')
    write_text_atomic(path, json.dumps(stats, indent=2, sort_keys=True) + '\n')
    print('median of the last %d evaluations: test %.2f%% -> %s' % (stats['evaluations'], stats['test'], path))


if __name__ == '__main__':
    tf.logging.set_verbosity(tf.logging.ERROR)
    app.run(cli_main(main))
