"""libml/data.py's unlabeled pipeline: views (weak, strong), each image's index, shards."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import tiny_data
from libml import data, records

tf.disable_v2_behavior()

UNLABELED, VALID = 40, 4


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    stem = tiny_data.make_ssl_dataset(root, labeled=9, unlabeled=UNLABELED, size=32, colors=3)
    return data.resolve('%s-%d' % (stem, VALID), root=root)


def batches(dataset, count, batch=6, **kwargs):
    with tf.Graph().as_default():
        tf.set_random_seed(3)
        next_batch = data.batches(data.unlabeled_pipeline(dataset, batch, 'cifar10', **kwargs))
        with tf.Session() as session:
            return [session.run(next_batch) for _ in range(count)]


def test_each_unlabeled_image_comes_with_its_index_in_the_unlabeled_set(dataset):
    images, _ = records.load_arrays(dataset.unlabel_file)
    unlabeled = images[VALID:]  # the first VALID records are the validation set
    got = batches(dataset, 12, views=('weak', 'strong'))
    indexes = np.concatenate([b['index'] for b in got])
    assert indexes.dtype == np.int64 and indexes.min() >= 0 and indexes.max() < UNLABELED - VALID
    assert len(set(indexes[:UNLABELED - VALID])) == UNLABELED - VALID  # one pass: each once
    for b in got[:2]:
        for index, views in zip(b['index'], b['image']):
            # The weak view is a flip and a crop of the image its index names: the centre region
            # (inside the 4-pixel crop margin) of one of the two orientations matches a shift of it.
            weak = np.round((views[0] + 1) * 127.5).astype(np.int64)
            source = unlabeled[index].astype(np.int64)
            assert _is_flip_and_crop_of(weak, source), index


def _is_flip_and_crop_of(view, source, pad=4):
    for image in (source, source[:, ::-1]):
        padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode='reflect')
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if (padded[dy:dy + 32, dx:dx + 32] == view).all():
                    return True
    return False


def test_weak_and_strong_views_differ_and_stay_in_range(dataset):
    got = batches(dataset, 3, views=('weak', 'strong'))
    views = np.stack([b['image'] for b in got])
    assert views.shape == (3, 6, 2, 32, 32, 3) and views.dtype == np.float32
    assert views.min() >= -1 and views.max() <= 1
    weak, strong = views[:, :, 0], views[:, :, 1]
    assert (np.abs(weak - strong).reshape(18, -1).max(1) > 0.1).all()
    # Cutout greys a box of every strong view: 0.0 in [-1, 1], which no uint8 pixel maps to.
    assert ((strong == 0).reshape(18, -1).sum(1) >= 8 * 8 * 3).all()
    assert not (weak == 0).any()


def test_shards_share_out_the_unlabeled_indexes_without_overlap(dataset):
    seen = []
    for shard in ((0, 2), (1, 2)):
        got = batches(dataset, 3, shard=shard)
        seen.append(set(np.concatenate([b['index'] for b in got])))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(UNLABELED - VALID))
    assert seen[0] == set(range(0, UNLABELED - VALID, 2))
