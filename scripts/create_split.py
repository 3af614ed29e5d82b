#!/usr/bin/env python
"""Split labeled records into a small labeled set and an unlabeled set: TARGET.SEED@SIZE-*.

Usage: create_split.py --seed=1 --label_split_size=250 [--class_balance] \
           $ML_DATA/SSL/cifar10 $ML_DATA/cifar10-train.tfrecord [$ML_DATA/cifar10-extra.tfrecord]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from libml import names, records  # noqa: E402
from libml.utils import UserError, cli_main  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_integer('seed', 0, 'Seed of the random draw (numpy RandomState).')
    flags.DEFINE_integer('label_split_size', None, 'Number of labeled examples to draw.')
    flags.DEFINE_bool('class_balance', False, 'Draw the same number per class instead of '
                      'following the class histogram of the labeled input records.')


def split_paths(target, seed, size):
    """Output files of a split: label, unlabel (TFRecord) and map (JSON)."""
    folder, name = os.path.split(target)
    return names.split_stem_files(os.path.join(folder, names.split_name(name, seed, size)))


class InputRecords(object):
    """Every input record: serialized bytes, label and origin (input index, record index)."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.serialized, labels, self.origins = [], [], []
        for source, path in enumerate(inputs):
            for index, record in records.read_serialized(path):
                labels.append(records.parse_example(record, '%s record %d' % (path, index))[1])
                self.serialized.append(record)
                self.origins.append((source, index))
        self.labels = np.array(labels, dtype=np.int64)

    def where(self, position):
        source, index = self.origins[position]
        return '%s record %d' % (self.inputs[source], index)


def class_count(pool):
    """Classes from the mappings beside the first input, else the largest label + 1."""
    names = records.mappings_beside(pool.inputs[0])
    nclass = len(names) if names else int(pool.labels.max(initial=-1)) + 1
    bad = np.flatnonzero((pool.labels < records.UNLABELED) | (pool.labels >= nclass))
    if bad.size:
        raise UserError('%s: label %d outside [0, %d) (and not -1 for unlabeled)'
                        % (pool.where(bad[0]), pool.labels[bad[0]], nclass))
    return nclass


def per_class_sizes(class_sizes, size, balance):
    """How many labeled examples to draw from each class, summing to `size`.

    Proportional: largest-remainder rounding of size * class share (ties to the lower class).
    Balanced: size // classes each, plus one for the first size % classes classes.
    """
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    nclass, total = len(class_sizes), int(class_sizes.sum())
    if balance:
        sizes = np.full(nclass, size // nclass) + (np.arange(nclass) < size % nclass)
    else:
        quotas = size * class_sizes / float(total)
        sizes = np.floor(quotas).astype(np.int64)
        extra = np.argsort(-(quotas - sizes), kind='stable')[:size - int(sizes.sum())]
        sizes[extra] += 1
    short = np.flatnonzero(sizes > class_sizes)
    if short.size:
        c = short[0]
        raise UserError('class %d has %d labeled examples, fewer than the %d this split needs; '
                        'use a smaller --label_split_size' % (c, class_sizes[c], sizes[c]))
    return sizes.astype(np.int64)


def draw(labels, sizes, rng):
    """Positions of the labeled draw (shuffled) and of the rest, known labels first then -1."""
    chosen = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                             for c, k in enumerate(sizes)]).astype(np.int64)
    rng.shuffle(chosen)
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    known, unknown = rest[labels[rest] >= 0], rest[labels[rest] < 0]
    return chosen, np.concatenate([rng.permutation(known), rng.permutation(unknown)])


def create_split(target, inputs, seed, size, class_balance=False):
    """Write the split TARGET.SEED@SIZE.

    Returns (output paths, labeled count per class, unlabeled count, unlabeled without a label).
    """
    paths = split_paths(target, seed, size)
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing:
        raise UserError('%s exists already; delete the split\'s -label, -unlabel and -map files '
                        'to draw it again' % existing[0])
    if not inputs:
        raise UserError('give the TFRecord files to split after the target')
    missing = [p for p in inputs if not os.path.isfile(p)]
    if missing:
        raise UserError('%s: no such TFRecord file' % missing[0])
    pool = InputRecords(inputs)
    nclass = class_count(pool)
    labeled = int((pool.labels >= 0).sum())
    if not 0 < size <= labeled:
        raise UserError('--label_split_size=%d: choose 1..%d (the labeled records in the inputs)'
                        % (size, labeled))
    sizes = per_class_sizes(np.bincount(pool.labels[pool.labels >= 0], minlength=nclass),
                            size, class_balance)
    chosen, rest = draw(pool.labels, sizes, np.random.RandomState(seed))
    with records.atomic_outputs([paths['label'], paths['unlabel'], paths['map']]) as tmps:
        for tmp, positions in zip(tmps, (chosen, rest)):
            records.write_serialized(tmp, (pool.serialized[p] for p in positions))
        with open(tmps[2], 'w') as f:
            json.dump({'sources': inputs,
                       'label': [list(pool.origins[p]) for p in chosen],
                       'unlabel': [list(pool.origins[p]) for p in rest]}, f)
    return paths, sizes, len(rest), int((pool.labels[rest] < 0).sum())


def main(argv):
    if len(argv) < 3:
        raise UserError('usage: create_split.py --seed=S --label_split_size=N [--class_balance] '
                        'TARGET INPUT.tfrecord...')
    if FLAGS.label_split_size is None:
        raise UserError('--label_split_size is required')
    paths, sizes, unlabeled, without_label = create_split(
        argv[1], argv[2:], FLAGS.seed, FLAGS.label_split_size, FLAGS.class_balance)
    print('wrote %s: %d images, per class %s' % (paths['label'], sizes.sum(),
                                                  ' '.join(str(s) for s in sizes)))
    print('wrote %s: %d images (%d without a label)' % (paths['unlabel'], unlabeled,
                                                         without_label))
    print('wrote %s' % paths['map'])


if __name__ == '__main__':
    define_flags()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
