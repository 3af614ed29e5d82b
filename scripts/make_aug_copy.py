#!/usr/bin/env python
"""Write N augmented copies of a split's unlabeled images as dataset NAME_augN.SEED@SIZE.

Usage: make_aug_copy.py --aug_dataset=cifar10.1@250 --aug_copy=50 --augment=cutout
"""

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from libml import augment, data, names, records  # noqa: E402
from libml.utils import UserError, cli_main  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string('aug_dataset', None, 'Split to augment: NAME.SEED@SIZE (files in '
                        '$ML_DATA/SSL).')
    flags.DEFINE_integer('aug_copy', 1, 'Augmented copies of every unlabeled image.')
    flags.DEFINE_string('augment', 'cifar10', 'Augmentation: %s.' % ', '.join(augment.KINDS))
    flags.DEFINE_integer('batch', 256, 'Images per batch through the augmentation graph.')
    flags.DEFINE_integer('seed', 1, 'Seed of the shuffle of the copies (the reference shuffles '
                         'them with seed 1).')


def copy_order(count, copies, seed):
    """Source image of each output record: the `copies` passes over `count` images, shuffled."""
    return np.random.RandomState(seed).permutation(copies * count) % count


def augmented_pngs(images, kind, order, batch=256):
    """Yield PNG bytes of images[order[k]], each augmented on its own (offline `kind`)."""
    function = augment.get_offline(kind)
    with tf.Graph().as_default():
        source = tf.placeholder(tf.uint8, images.shape)
        indices = tf.placeholder(tf.int64, [len(order)])
        dataset = tf.data.Dataset.from_tensor_slices(indices)
        dataset = dataset.map(
            lambda i: tf.image.encode_png(data.to_uint8(function(data.to_float(tf.gather(source, i))))),
            num_parallel_calls=tf.data.experimental.AUTOTUNE)
        iterator = dataset.batch(batch).prefetch(2).make_initializable_iterator()
        pngs = iterator.get_next()
        with tf.Session() as session:
            session.run(iterator.initializer, {source: images, indices: order})
            while True:
                try:
                    for png in session.run(pngs):
                        yield png
                except tf.errors.OutOfRangeError:
                    return


def paths(name, seed, size, suffix=''):
    """Files of split NAME{suffix}.SEED@SIZE and of its dataset's test set and class mappings."""
    split = 'SSL/' + names.split_name(name + suffix, seed, size)
    return {'unlabel': names.dataset_path(split, 'unlabel'),
            'label': names.dataset_path(split, 'label'),
            'map': names.split_map_path(split),
            'test': names.dataset_path(name + suffix, 'test'),
            'classes': names.class_mappings_path(name + suffix)}


def make_aug_copy(split_name, copies, kind, batch=256, seed=1):
    """Write NAME_augN.SEED@SIZE, all files or none; return {kind: path written}, image count."""
    match = names.SPLIT_NAME.match(split_name or '')
    if not match:
        raise UserError('--aug_dataset=%s: give a split as NAME.SEED@SIZE, e.g. cifar10.1@250'
                        % split_name)
    if copies < 1:
        raise UserError('--aug_copy=%d: give 1 or more copies' % copies)
    augment.get(kind)  # reject an unknown kind before any work
    name, seed, size = match.group(1), int(match.group(2)), int(match.group(3))
    src, dst = paths(name, seed, size), paths(name, seed, size, '_aug%d' % copies)
    missing = [p for key, p in src.items() if key != 'classes' and not os.path.isfile(p)]
    if missing:
        raise UserError('%s: no such file; create the split first (create_split.py)' % missing[0])
    images, labels = records.load_arrays(src['unlabel'])
    keys = ['unlabel', 'map', 'label', 'test'] + (['classes'] if os.path.isfile(src['classes'])
                                                  else [])
    with records.atomic_outputs([dst[k] for k in keys]) as tmps:
        tmp = dict(zip(keys, tmps))
        order = copy_order(len(images), copies, seed)
        pngs = tqdm.tqdm(augmented_pngs(images, kind, order, batch), total=len(order),
                         desc='augment', leave=False, disable=None)
        count = records.write_serialized(tmp['unlabel'], (
            records.make_example(png, labels[order[k]]) for k, png in enumerate(pngs)))
        for key in keys[2:]:
            shutil.copyfile(src[key], tmp[key])
        _write_map(src['map'], tmp['map'], split_name, copies, kind, seed)
    return dict((k, dst[k]) for k in keys), count


def _write_map(source, target, split_name, copies, kind, seed):
    """The split's map.json plus a note: unlabel record k is a copy of map['unlabel'][order[k]]."""
    with open(source) as f:
        mapping = json.load(f)
    mapping['augmented'] = {'from': split_name, 'copies': copies, 'augment': kind, 'seed': seed,
                            'order': 'record k copies unlabel[numpy.random.RandomState(seed)'
                                     '.permutation(copies * U)[k] % U], U = len(unlabel)'}
    with open(target, 'w') as f:
        json.dump(mapping, f)


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    dst, count = make_aug_copy(FLAGS.aug_dataset, FLAGS.aug_copy, FLAGS.augment, FLAGS.batch,
                               FLAGS.seed)
    print('wrote %s: %d augmented images (%s x %d)' % (dst.pop('unlabel'), count, FLAGS.augment,
                                                        FLAGS.aug_copy))
    print('\n'.join('wrote %s' % path for path in dst.values()))


if __name__ == '__main__':
    define_flags()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
