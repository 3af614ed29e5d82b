#!/usr/bin/env python
"""Print record count, class histogram and image shapes of TFRecord files.

Usage: inspect_dataset.py $ML_DATA/cifar10-train.tfrecord $ML_DATA/SSL/cifar10.1@250-label.tfrecord
Shapes come from the PNG headers (the pixels are not decoded).
"""

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

from absl import app  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from libml import records  # noqa: E402
from libml.utils import UserError, cli_main  # noqa: E402


def inspect(path):
    """(record count, Counter of labels, Counter of image shapes) of a TFRecord file."""
    labels, shapes = collections.Counter(), collections.Counter()
    count = 0
    for index, png, label in records.read_records(path):
        labels[label] += 1
        shapes[records.image_shape(png, '%s record %d' % (path, index))] += 1
        count += 1
    return count, labels, shapes


def describe(path):
    """Lines describing one file: count, shapes, then one line per label."""
    count, labels, shapes = inspect(path)
    names = records.mappings_beside(path) or []
    shape_text = ', '.join('%s (%d)' % (records.format_shape(s), n) if len(shapes) > 1
                           else records.format_shape(s) for s, n in sorted(shapes.items()))
    lines = ['%s: %d records, image shape %s' % (path, count, shape_text or '-')]
    for label in sorted(labels):
        if label == records.UNLABELED:
            title = 'unlabeled'
        else:
            title = '%d %s' % (label, names[label] if 0 <= label < len(names) else '')
        lines.append('  %-24s %d' % (title.strip(), labels[label]))
    return lines


def main(argv):
    if len(argv) < 2:
        raise UserError('usage: inspect_dataset.py FILE.tfrecord...')
    for path in argv[1:]:
        print('\n'.join(describe(path)))


if __name__ == '__main__':
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
