"""filter_dataset.py: keep classes, renumber them, and build class-mismatch splits."""
import json
import os
import sys

import numpy as np
import pytest

from libml import names, records
from libml.utils import UserError

from conftest import ROOT, assert_one_line_error, run_script  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import create_split  # noqa: E402
import filter_dataset  # noqa: E402

SIX = '2,3,4,5,6,7'


@pytest.fixture
def ml_data(tmp_path, monkeypatch):
    """$ML_DATA with dataset 'ten': 3 train and 1 test image per class, 4 unlabeled extras."""
    root = str(tmp_path)
    monkeypatch.setenv('ML_DATA', root)
    rng = np.random.RandomState(0)
    for part, labels in (('train', np.tile(np.arange(10), 3)), ('test', np.arange(10)),
                         ('extra', [-1] * 4)):
        images = rng.randint(0, 256, (len(labels), 2, 2, 3)).astype(np.uint8)
        records.write_arrays(names.dataset_path('ten', part), images, labels)
    records.write_class_mappings(names.class_mappings_path('ten'),
                                 ['n%d' % i for i in range(10)])
    return root


def _labels(name, part):
    return [label for _, _, label in records.read_records(names.dataset_path(name, part))]


def test_remap_keeps_listed_classes_renumbered(ml_data):
    filter_dataset.filter_dataset('ten', 'six', SIX, remap=True)
    assert sorted(_labels('six', 'train')) == sorted(list(range(6)) * 3)
    assert _labels('six', 'test') == list(range(6))
    assert _labels('six', 'extra') == [-1] * 4
    assert records.read_class_mappings(names.class_mappings_path('six')) == \
        ['n%d' % i for i in range(2, 8)]
    source = [png for _, png, label in records.read_records(names.dataset_path('ten', 'test'))]
    kept = [png for _, png, _ in records.read_records(names.dataset_path('six', 'test'))]
    assert kept == source[2:8]  # the same PNG bytes, not re-encoded


def test_without_remap_labels_and_names_stay(ml_data):
    filter_dataset.filter_dataset('ten', 'pair', '7,2')
    assert _labels('pair', 'test') == [2, 7]
    assert len(records.read_class_mappings(names.class_mappings_path('pair'))) == 10


def _mismatch_split(unlabel_filter, name):
    """Filter split ten.1@10 (one labeled image per class) into a CIFAR-6-style split `name`."""
    if not os.path.exists(names.dataset_path('SSL/ten.1@10', 'label')):
        create_split.create_split(os.path.join(os.environ['ML_DATA'], 'SSL', 'ten'),
                                  [names.dataset_path('ten', 'train')], 1, 10, True)
    filter_dataset.filter_dataset('SSL/ten.1@10', 'SSL/%s.1@10' % name, SIX, unlabel_filter,
                                  remap=True)
    with open(os.path.join(os.environ['ML_DATA'], 'SSL', '%s.1@10-map.json' % name)) as f:
        return _labels('SSL/%s.1@10' % name, 'label'), _labels('SSL/%s.1@10' % name, 'unlabel'), \
            json.load(f)


def test_mismatch_0_percent_unlabeled_from_four_labeled_classes(ml_data):
    label, unlabel, mapping = _mismatch_split('4,5,6,7', 'mm0')
    assert sorted(label) == list(range(6))  # one labeled image per animal class
    assert sorted(unlabel) == [2, 2, 3, 3, 4, 4, 5, 5]  # classes 4-7 minus the labeled ones
    assert _labels('mm0', 'test') == list(range(6))  # the split's test set comes along
    train = _labels('ten', 'train')
    assert [train[i] - 2 for _, i in mapping['unlabel']] == unlabel
    assert len(mapping['label']) == 6


def test_mismatch_100_and_25_percent(ml_data):
    _, unlabel, _ = _mismatch_split('0,1,8,9', 'mm100')
    assert unlabel == [-1] * 8  # outside the labeled classes: no label
    _, unlabel, _ = _mismatch_split('0,5,6,7', 'mm25')
    assert unlabel[:6] == [x for x in unlabel if x >= 0] and unlabel[6:] == [-1, -1]


@pytest.mark.parametrize('classes,match', [
    ('a,b', 'give comma-separated class numbers'), ('2,2', 'distinct'),
    ('2,12', r'class 12 outside \[0, 10\)')])
def test_bad_class_lists(ml_data, classes, match):
    with pytest.raises(UserError, match=match):
        filter_dataset.filter_dataset('ten', 'six', classes)


def test_bad_names(ml_data):
    with pytest.raises(UserError, match='no ten_x-'):
        filter_dataset.filter_dataset('ten_x', 'six', SIX)
    with pytest.raises(UserError, match='choose a new dataset name'):
        filter_dataset.filter_dataset('ten', 'ten', SIX)
    with pytest.raises(UserError, match='filter a split into a split'):
        filter_dataset.filter_dataset('SSL/ten.1@10', 'six', SIX)


def test_cli_error_is_one_line_and_writes_nothing(ml_data):
    result = run_script('filter_dataset.py', ['--filter_dataset=ten', '--save_name=six',
                                              '--class_filter=2,99'], ml_data)
    line = assert_one_line_error(result.returncode, result.stderr)
    assert line == 'error: --class_filter: class 99 outside [0, 10)'
    assert not [f for f in os.listdir(ml_data) if f.startswith('six')]
