#!/usr/bin/env python
"""Export a run's EMA classifier for deployment (see docs/export.md).

    python scripts/export.py RUN [--ckpt=STEP] [--format=pb,savedmodel] [--batch=1] [--out=DIR]

Writes DIR (default RUN/export) all at once: realmix.pb (frozen GraphDef, input `images` uint8
[batch,H,W,C], outputs `probabilities` float32 and `classes` int32), savedmodel/ (signature
serving_default, dynamic batch) and export.json.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import tensorflow.compat.v1 as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from libml import export  # noqa: E402
from libml.utils import UserError, cli_main, quiet_native_logs  # noqa: E402

flags.DEFINE_integer('ckpt', None, 'Step of the checkpoint to export (RUN/tf/model.ckpt-STEP); '
                     'default: the newest.')
flags.DEFINE_string('format', ','.join(export.FORMATS), 'Comma-separated: pb (frozen GraphDef for '
                    'ATC), savedmodel (TensorFlow Serving).')
flags.DEFINE_integer('batch', 1, 'Static batch of the frozen graph (ATC compiles fixed shapes); '
                     'the SavedModel takes any batch.')
flags.DEFINE_string('out', '', 'Output folder (must not exist); default RUN/export.')
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise UserError('usage: export.py RUN [--ckpt=STEP] [--format=pb,savedmodel] [--batch=1] '
                        '[--out=DIR]')
    export.export(argv[1], FLAGS.out or None, FLAGS.ckpt, export.parse_formats(FLAGS.format),
                  FLAGS.batch)


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
