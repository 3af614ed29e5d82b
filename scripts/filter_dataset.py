#!/usr/bin/env python
"""Keep only some classes of a dataset or split under $ML_DATA, optionally renumbered.

Usage: filter_dataset.py --filter_dataset=cifar10 --save_name=cifar6 --class_filter=2,3,4,5,6,7 \
           --remap
A split name (SSL/cifar10.1@4000) filters its -label, -unlabel and -map.json files and the test
set of its dataset; --unlabel_filter picks other classes for the unlabeled side (class mismatch).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402

from libml import names, records  # noqa: E402
from libml.utils import UserError, cli_main, ml_data_dir  # noqa: E402

FLAGS = flags.FLAGS
UNLABELED_PARTS = ('extra', 'unlabel')


def define_flags():
    flags.DEFINE_string('filter_dataset', None, 'Dataset or split name under $ML_DATA to filter '
                        '(cifar10, SSL/cifar10.1@4000).')
    flags.DEFINE_string('save_name', None, 'Name of the filtered dataset or split.')
    flags.DEFINE_string('class_filter', None, 'Comma-separated classes to keep, e.g. 2,3,4,5,6,7.')
    flags.DEFINE_string('unlabel_filter', None, 'Classes to keep in the unlabeled parts (-unlabel, '
                        '-extra); default: --class_filter.')
    flags.DEFINE_bool('remap', False, 'Renumber the --class_filter classes 0..k-1 in the listed '
                      'order; unlabeled records of other classes get label -1.')


def parse_classes(text, flag, nclass):
    """Distinct class numbers from 'a,b,c', each within [0, nclass) when nclass is known."""
    try:
        classes = [int(c) for c in (text or '').split(',') if c.strip()]
    except ValueError:
        raise UserError('--%s=%s: give comma-separated class numbers, e.g. 2,3,4' % (flag, text))
    if not classes or len(set(classes)) != len(classes):
        raise UserError('--%s=%s: give distinct class numbers, e.g. 2,3,4' % (flag, text))
    bad = [c for c in classes if c < 0 or (nclass and c >= nclass)]
    if bad:
        raise UserError('--%s: class %d outside [0, %s)' % (flag, bad[0], nclass or 'inf'))
    return classes


def relabeler(keep, classes, remap):
    """label -> new label, or None to drop: -1 stays, kept classes renumbered when `remap`."""
    keep, position = set(keep), dict((c, i) for i, c in enumerate(classes))

    def relabel(label):
        if label == records.UNLABELED:
            return label
        if label not in keep:
            return None
        return position.get(label, records.UNLABELED) if remap else label
    return relabel


def filter_records(path, relabel, known_first):
    """[(record index, serialized, new label)] of the kept records; known labels first if asked.

    Records whose label stays are copied byte for byte; relabeled ones get a new Example around
    the same PNG bytes (no image is re-encoded).
    """
    kept = []
    for index, record in records.read_serialized(path):
        png, label = records.parse_example(record, '%s record %d' % (path, index))
        new = relabel(label)
        if new is not None:
            kept.append((index, record if new == label else records.make_example(png, new), new))
    if not kept:
        raise UserError('%s: no records of the requested classes' % path)
    if known_first:
        kept.sort(key=lambda k: k[2] < 0)  # stable; validation takes the first records
    return kept


def plan(source, target):
    """[(part, input path, output path)] of the files to filter."""
    pairs = [(part, names.dataset_path(source, part), names.dataset_path(target, part))
             for part in names.PARTS]
    if '@' in os.path.basename(source):  # a split: the test set lives with its dataset
        pairs.append(('test', names.dataset_path(names.base_name(source), 'test'),
                      names.dataset_path(names.base_name(target), 'test')))
    pairs = [p for p in pairs if os.path.isfile(p[1])]
    if not pairs:
        raise UserError('--filter_dataset=%s: no %s-{%s}.tfrecord files in %s'
                        % (source, source, ','.join(names.PARTS), ml_data_dir()))
    return pairs


def filter_dataset(source, target, class_filter, unlabel_filter=None, remap=False):
    """Write the filtered copy of every part of `source` as `target`, all files or none.

    Returns ([(output path, labels written)], [other files written]).
    """
    if ('@' in os.path.basename(source)) != ('@' in os.path.basename(target)):
        raise UserError('--filter_dataset=%s --save_name=%s: filter a split into a split '
                        '(NAME.SEED@SIZE) or a dataset into a dataset' % (source, target))
    if names.base_name(source) == names.base_name(target):
        raise UserError('--save_name=%s: choose a new dataset name' % target)
    mappings = names.class_mappings_path(source)
    class_names = records.read_class_mappings(mappings) if os.path.isfile(mappings) else None
    classes = parse_classes(class_filter, 'class_filter', class_names and len(class_names))
    unlabel_classes = (parse_classes(unlabel_filter, 'unlabel_filter', class_names and len(class_names))
                       if unlabel_filter else classes)
    contents = []
    for part, path, out in plan(source, target):
        keep = unlabel_classes if part in UNLABELED_PARTS else classes
        kept = filter_records(path, relabeler(keep, classes, remap), part in UNLABELED_PARTS)
        contents.append((part, out, kept))
    others = {}
    if class_names or remap:
        others[names.class_mappings_path(target)] = (
            [class_names[c] if class_names else str(c) for c in classes] if remap else class_names)
    split_map = _split_map(source, contents)
    if split_map is not None:
        others[names.split_map_path(target)] = split_map
    _write(contents, others)
    return [(out, [label for _, _, label in kept]) for _, out, kept in contents], list(others)


def _split_map(source, contents):
    """The source split's map.json restricted to the kept records, or None when it has none."""
    path = names.split_map_path(source)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        mapping = json.load(f)
    for part, _, kept in contents:
        if part in ('label', 'unlabel'):
            mapping[part] = [mapping[part][index] for index, _, _ in kept]
    return mapping


def _write(contents, others):
    """Write the record files and the JSON files {path: names list or map} together."""
    paths = [out for _, out, _ in contents] + list(others)
    with records.atomic_outputs(paths) as tmps:
        for tmp, (_, _, kept) in zip(tmps, contents):
            records.write_serialized(tmp, (record for _, record, _ in kept))
        for tmp, value in zip(tmps[len(contents):], others.values()):
            if isinstance(value, list):
                records.write_class_mappings_to(tmp, value)
            else:
                with open(tmp, 'w') as f:
                    json.dump(value, f)


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    if not (FLAGS.filter_dataset and FLAGS.save_name and FLAGS.class_filter):
        raise UserError('give --filter_dataset, --save_name and --class_filter')
    written, others = filter_dataset(FLAGS.filter_dataset, FLAGS.save_name, FLAGS.class_filter,
                                     FLAGS.unlabel_filter, FLAGS.remap)
    for path, labels in written:
        histogram = dict((label, labels.count(label)) for label in sorted(set(labels)))
        print('wrote %s: %d records, per label %s' % (path, len(labels), json.dumps(histogram)))
    for path in others:
        print('wrote %s' % path)


if __name__ == '__main__':
    define_flags()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
