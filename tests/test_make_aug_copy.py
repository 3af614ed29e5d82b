"""make_aug_copy.py: N augmented passes over a split's unlabeled set, as a trainable dataset."""
import filecmp
import json
import os
import sys

import numpy as np
import pytest

from libml import names, records
from libml.utils import UserError

from conftest import ROOT, run_script  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import create_split  # noqa: E402
import make_aug_copy  # noqa: E402


@pytest.fixture
def ml_data(tmp_path, monkeypatch):
    """$ML_DATA with dataset 'tiny' (20 train, 5 test images) and its split tiny.1@5."""
    root = str(tmp_path)
    monkeypatch.setenv('ML_DATA', root)
    rng = np.random.RandomState(0)
    for part, count in (('train', 20), ('test', 5)):
        images = rng.randint(0, 256, (count, 8, 8, 3)).astype(np.uint8)
        records.write_arrays(names.dataset_path('tiny', part), images, np.arange(count) % 5)
    records.write_class_mappings(names.class_mappings_path('tiny'), list('abcde'))
    create_split.create_split(os.path.join(root, 'SSL', 'tiny'),
                              [names.dataset_path('tiny', 'train')], 1, 5)
    return root


def test_copies_in_passes_with_labels_and_companion_files(ml_data):
    dst, count = make_aug_copy.make_aug_copy('tiny.1@5', 2, 'none')
    assert count == 30
    src = make_aug_copy.paths('tiny', 1, 5)
    images, labels = records.load_arrays(src['unlabel'])
    copies, copy_labels = records.load_arrays(dst['unlabel'])
    order = make_aug_copy.copy_order(15, 2, seed=1)
    assert sorted(order.tolist()) == sorted(list(range(15)) * 2)  # each image twice, shuffled
    assert order.tolist() != list(range(15)) * 2
    np.testing.assert_array_equal(copies, images[order])  # exact round trip, in the seeded order
    assert copy_labels.tolist() == labels[order].tolist()
    assert dst['unlabel'].endswith(os.path.join('SSL', 'tiny_aug2.1@5-unlabel.tfrecord'))
    for key in ('label', 'test', 'classes'):
        assert filecmp.cmp(src[key], dst[key], shallow=False), key
    with open(dst['map']) as f:
        mapping = json.load(f)
    augmented = mapping['augmented']
    assert (augmented['from'], augmented['copies'], augmented['augment'], augmented['seed']) == (
        'tiny.1@5', 2, 'none', 1)
    assert len(mapping['unlabel']) == 15


def test_offline_cutout_erases_one_rectangle_per_image_and_does_not_shift(ml_data, monkeypatch):
    from libml import augment
    monkeypatch.setattr(augment, 'ERASE_PROBABILITY', 1.0)
    dst, count = make_aug_copy.make_aug_copy('tiny.1@5', 20, 'cutout', batch=16)
    images, _ = records.load_arrays(make_aug_copy.paths('tiny', 1, 5)['unlabel'])
    copies, _ = records.load_arrays(dst['unlabel'])
    assert count == 300 and copies.shape == (300, 8, 8, 3)
    order = make_aug_copy.copy_order(15, 20, seed=1)
    boxes = set()
    for copy, source in zip(copies, images[order]):
        changed = (copy != source).any(2)
        rows, cols = np.nonzero(changed)
        # No flip or crop: every pixel outside one rectangle is untouched.
        assert changed.sum() > 0
        box = (rows.min(), rows.max(), cols.min(), cols.max())
        inside = copy[box[0]:box[1] + 1, box[2]:box[3] + 1]
        assert np.ptp(inside.reshape(-1, 3), axis=0).max() <= 0  # one fill value, as the reference
        boxes.add(box)
    assert len(boxes) > 20  # drawn per image, not once for all (the reference's bug)


@pytest.mark.parametrize('name,copies,kind,match', [
    ('tiny@5', 1, 'none', 'give a split as NAME.SEED@SIZE'),
    ('tiny.2@5', 1, 'none', r'tiny.2@5-\w+.(tfrecord|json): no such file'),
    ('tiny.1@5', 0, 'none', 'give 1 or more copies'),
    ('tiny.1@5', 1, 'rotate', 'unknown augmentation')])
def test_bad_arguments(ml_data, name, copies, kind, match):
    with pytest.raises(UserError, match=match):
        make_aug_copy.make_aug_copy(name, copies, kind)
    assert not os.path.exists(names.dataset_path('tiny_aug%d' % copies, 'test'))


def test_cli_writes_the_dataset(ml_data):
    result = run_script('make_aug_copy.py', ['--aug_dataset=tiny.1@5', '--aug_copy=1',
                                             '--augment=svhn'], ml_data)
    assert result.returncode == 0, result.stderr
    assert 'tiny_aug1.1@5-unlabel.tfrecord: 15 augmented images (svhn x 1)' in result.stdout
    assert os.path.isfile(names.dataset_path('tiny_aug1', 'test'))
