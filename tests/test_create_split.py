"""create_split.py: per-class labeled draw, unlabeled rest, map, refusals, all-or-nothing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from libml import records
from libml.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import create_split  # noqa: E402

CLASS_SIZES = [40, 20, 20, 10, 10]


def _dataset(folder, labels, part='train', names=True):
    """$folder/d-{part}.tfrecord with 2x2 images whose first pixel encodes the record index."""
    images = np.zeros((len(labels), 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))
    path = os.path.join(folder, 'd-%s.tfrecord' % part)
    records.write_arrays(path, images, labels)
    if names:
        records.write_class_mappings(os.path.join(folder, 'd_class_mappings.json'),
                                     ['c%d' % i for i in range(len(CLASS_SIZES))])
    return path


def _train(folder):
    labels = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
    return _dataset(folder, np.random.RandomState(0).permutation(labels))


def _split(folder, size, seed=1, inputs=None, balance=False):
    target = os.path.join(folder, 'SSL', 'd')
    create_split.create_split(target, inputs or [_train(folder)], seed, size, balance)
    paths = create_split.split_paths(target, seed, size)
    with open(paths['map']) as f:
        mapping = json.load(f)
    return [records.load_arrays(paths[p])[1].tolist() for p in ('label', 'unlabel')], mapping


def test_labeled_histogram_follows_training_distribution(tmp_path):
    (label, unlabel), mapping = _split(str(tmp_path), 10)
    assert np.bincount(label, minlength=5).tolist() == [4, 2, 2, 1, 1]
    assert len(unlabel) == 90
    origins = [tuple(o) for o in mapping['label'] + mapping['unlabel']]
    assert sorted(origins) == [(0, i) for i in range(100)]  # every record exactly once


def test_map_points_at_the_source_records(tmp_path):
    folder = str(tmp_path)
    source_images, source_labels = records.load_arrays(_train(folder))
    (label, _), mapping = _split(folder, 10)
    assert [source_labels[i] for _, i in mapping['label']] == label
    images, _ = records.load_arrays(os.path.join(folder, 'SSL', 'd.1@10-label.tfrecord'))
    np.testing.assert_array_equal(images, source_images[[i for _, i in mapping['label']]])


def test_largest_remainder_rounding_sums_exactly():
    assert create_split.per_class_sizes([5, 3, 2], 5, False).tolist() == [3, 1, 1]
    sizes = create_split.per_class_sizes([333, 333, 334], 100, False)
    assert sizes.sum() == 100 and sizes.tolist() == [33, 33, 34]


def test_class_balance_spreads_the_remainder_over_the_first_classes(tmp_path):
    assert create_split.per_class_sizes(CLASS_SIZES, 12, True).tolist() == [3, 3, 2, 2, 2]
    (label, _), _ = _split(str(tmp_path), 10, balance=True)
    assert np.bincount(label).tolist() == [2, 2, 2, 2, 2]
    with pytest.raises(UserError, match='class 3 has 10 labeled examples, fewer than the 11'):
        create_split.per_class_sizes(CLASS_SIZES, 55, True)


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    first = _split(str(tmp_path / 'a'), 10, seed=3)[1]
    again = _split(str(tmp_path / 'b'), 10, seed=3)[1]
    other = _split(str(tmp_path / 'c'), 10, seed=4)[1]
    assert first['label'] == again['label'] and first['unlabel'] == again['unlabel']
    assert first['label'] != other['label']


def test_extra_records_go_to_unlabel_after_the_labeled_rest(tmp_path):
    folder = str(tmp_path)
    extra = _dataset(folder, [-1] * 7, part='extra', names=False)
    (label, unlabel), mapping = _split(folder, 10, inputs=[_train(folder), extra])
    assert len(label) == 10 and min(label) >= 0
    assert unlabel[:90] == [x for x in unlabel if x >= 0] and unlabel[90:] == [-1] * 7
    assert sorted(i for s, i in mapping['unlabel'] if s == 1) == list(range(7))


def test_size_larger_than_data_or_bad_label_or_missing_input(tmp_path):
    folder = str(tmp_path)
    with pytest.raises(UserError, match='label_split_size=101: choose 1..100'):
        _split(folder, 101)
    bad = _dataset(folder, [0, 1, 7], part='test')
    with pytest.raises(UserError, match=r'd-test.tfrecord record 2: label 7 outside \[0, 5\)'):
        _split(folder, 2, inputs=[bad])
    with pytest.raises(UserError, match='nope.tfrecord: no such TFRecord file'):
        _split(folder, 2, inputs=[os.path.join(folder, 'nope.tfrecord')])
    assert not os.path.exists(os.path.join(folder, 'SSL'))


def test_no_file_half_written_when_writing_fails(tmp_path, monkeypatch):
    calls, original = [], records.write_serialized

    def failing_write(path, examples):  # the label file goes through, the unlabel file fails
        calls.append(path)
        if len(calls) == 2:
            raise OSError('disk full')
        return original(path, examples)
    monkeypatch.setattr(records, 'write_serialized', failing_write)
    with pytest.raises(OSError):
        _split(str(tmp_path), 10)
    assert os.listdir(str(tmp_path / 'SSL')) == []


def test_cli_refuses_to_overwrite_a_split(tmp_path):
    folder = str(tmp_path)
    _split(folder, 10)
    label_file = os.path.join(folder, 'SSL', 'd.1@10-label.tfrecord')
    before = os.path.getmtime(label_file)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'create_split.py'), '--seed=1',
         '--label_split_size=10', os.path.join(folder, 'SSL', 'd'),
         os.path.join(folder, 'd-train.tfrecord')],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and 'd.1@10-label.tfrecord exists already' in error[0]
    assert os.path.getmtime(label_file) == before
