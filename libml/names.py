"""Names shared by the data tools, the trainer and the job: dataset ids, the files under $ML_DATA,
devices and precisions. No TensorFlow here, so run_sh.py and read_fromobs.py can import it.

    $ML_DATA/NAME-{train,test,extra}.tfrecord        a dataset
    $ML_DATA/NAME_class_mappings.json                its class names {"0": "airplane", ...}
    $ML_DATA/SSL/NAME.SEED@SIZE-{label,unlabel}.tfrecord, -map.json    a split of it
    NAME.SEED@SIZE-VALID                              a dataset id: the split and its validation size
"""

import os
import re

from libml.utils import UserError, ml_data_dir

DEVICES = ('auto', 'cpu', 'gpu', 'npu')
PRECISIONS = ('fp32', 'mixed')
PARTS = ('train', 'test', 'extra', 'label', 'unlabel')
DATASET_NAME = re.compile(r'^[A-Za-z0-9_\-]+$')
DATASET_ID = re.compile(r'^(?P<name>[A-Za-z0-9_\-]+)\.(?P<seed>\d+)@(?P<size>\d+)(-(?P<valid>\d+))?$')
SPLIT_NAME = re.compile(r'^(?P<name>[A-Za-z0-9_\-]+)\.(?P<seed>\d+)@(?P<size>\d+)$')


def parse_dataset_id(dataset_id):
    """Split `{name}.{seed}@{size}-{valid}` into (name, seed, size, valid); valid defaults to 0."""
    match = DATASET_ID.match(dataset_id or '')
    if not match:
        raise UserError('dataset id %r is not of the form NAME.SEED@SIZE-VALID, e.g. cifar10.1@250-500'
                        % dataset_id)
    valid = int(match.group('valid') or 0)
    return match.group('name'), int(match.group('seed')), int(match.group('size')), valid


def dataset_id(name, seed, size, valid):
    """'cifar10', 1, 250, 500 -> 'cifar10.1@250-500'."""
    return '%s-%d' % (split_name(name, seed, size), valid)


def split_name(name, seed, size):
    """'cifar10', 1, 250 -> 'cifar10.1@250' (the split's file stem under SSL/)."""
    return '%s.%d@%d' % (name, seed, size)


def split_files(name, seed, size, root=None):
    """The files of a split: {'label', 'unlabel'} TFRecords and its 'map' JSON."""
    return split_stem_files(os.path.join(root or ml_data_dir(), 'SSL', split_name(name, seed, size)))


def split_stem_files(stem):
    """The files of the split whose path without suffix is `stem` (e.g. DIR/SSL/cifar10.1@250)."""
    return {'label': stem + '-label.tfrecord', 'unlabel': stem + '-unlabel.tfrecord',
            'map': stem + '-map.json'}


def dataset_path(name, part, root=None):
    """$ML_DATA/{name}-{part}.tfrecord (name may hold a folder, e.g. 'SSL/cifar10.1@250')."""
    return os.path.join(root or ml_data_dir(), '%s-%s.tfrecord' % (name, part))


def split_map_path(name, root=None):
    """$ML_DATA/{name}-map.json of a split name like 'SSL/cifar10.1@250'."""
    return os.path.join(root or ml_data_dir(), name + '-map.json')


def base_name(name):
    """The dataset behind a name: 'SSL/cifar10.1@250' -> 'cifar10', 'cifar10' -> 'cifar10'."""
    name = os.path.basename(name)
    return name.split('.')[0] if '@' in name else name


def class_mappings_path(name, root=None):
    """$ML_DATA/{dataset}_class_mappings.json for a dataset or split name."""
    return os.path.join(root or ml_data_dir(), '%s_class_mappings.json' % base_name(name))


def record_file_dataset(path):
    """(folder, dataset name) of a file named like {name}-{part}.tfrecord, else (folder, None)."""
    folder, filename = os.path.split(path)
    stem = filename[:-len('.tfrecord')] if filename.endswith('.tfrecord') else None
    for part in PARTS:
        if stem and stem.endswith('-' + part):
            return folder, stem[:-len(part) - 1]
    return folder, None
