"""Augmentations: shape and range kept, random per call, flip/crop/erase do what they say."""
import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from libml import augment
from libml.utils import UserError


def _draws(function, image, times):
    """`times` independent outputs of function(image) in graph mode."""
    with tf.Graph().as_default():
        out = function(tf.constant(image, tf.float32))
        with tf.Session() as session:
            return [session.run(out) for _ in range(times)]


def _gradient(height, width, channels):
    """An image whose pixels are all different, in [-1, 1]."""
    return np.linspace(-1, 1, height * width * channels, dtype=np.float32).reshape(
        height, width, channels)


def _placement(out, image, pad):
    """(flipped, (dy, dx)) such that `out` is that window of the reflect-padded image, or None."""
    height, width = image.shape[:2]
    for flipped, source in ((False, image), (True, image[:, ::-1])):
        padded = np.pad(source, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.allclose(out, padded[dy:dy + height, dx:dx + width]):
                    return flipped, (dy, dx)
    return None


@pytest.mark.parametrize('shape', [(32, 32, 3), (8, 8, 1)])
def test_every_kind_keeps_shape_dtype_and_range(shape):
    image = np.random.RandomState(0).uniform(-1, 1, shape).astype(np.float32)
    for kind in augment.KINDS:
        for out in _draws(augment.get(kind), image, 3):
            assert out.shape == shape and out.dtype == np.float32, kind
            assert out.min() >= -1 and out.max() <= 1, kind


def test_outputs_differ_between_calls():
    image = _gradient(32, 32, 3)
    for kind in ('cifar10', 'color', 'cutout', 'svhn'):
        outs = _draws(augment.get(kind), image, 8)
        assert len(set(o.tobytes() for o in outs)) > 1, kind
    assert all(np.array_equal(o, image) for o in _draws(augment.get('none'), image, 2))


def test_svhn_shifts_without_mirroring_by_one_eighth_width():
    image = _gradient(32, 32, 3)
    placements = [_placement(o, image, 4) for o in _draws(augment.get('svhn'), image, 12)]
    assert None not in placements
    assert not any(flipped for flipped, _ in placements)
    assert len(set(offset for _, offset in placements)) > 3


def test_cifar10_mirrors_and_shifts():
    image = _gradient(32, 32, 3)
    placements = [_placement(o, image, 4) for o in _draws(augment.get('cifar10'), image, 16)]
    assert None not in placements
    assert set(flipped for flipped, _ in placements) == {False, True}


def test_padding_is_12_pixels_at_96_and_1_pixel_at_8():
    assert [augment.crop_padding(w) for w in (8, 32, 96)] == [1, 4, 12]
    image = _gradient(96, 96, 3)
    placements = [_placement(o, image, 12) for o in _draws(augment.get('stl10'), image, 6)]
    assert None not in placements
    assert max(max(offset) for _, offset in placements) > 8  # beyond what 4 px would allow
    digit = _gradient(8, 8, 1)
    assert None not in [_placement(o, digit, 1) for o in _draws(augment.get('svhn'), digit, 4)]


def test_erase_hits_about_30_percent_with_a_rectangle_of_one_random_value():
    outs = _draws(augment.erase, np.zeros((16, 16, 3), np.float32), 400)
    erased = [o for o in outs if np.any(o != 0)]
    assert abs(len(erased) / 400. - augment.ERASE_PROBABILITY) < 0.08
    for out in erased[:20]:
        rows, cols = np.nonzero(np.any(out != 0, axis=2))
        box = out[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert np.all(box != 0) and np.ptp(box) == 0  # one solid rectangle of one value
        assert box.min() >= -1 and box.max() <= 1
    assert len({float(o.max() if o.max() > 0 else o.min()) for o in erased}) > 10  # value per draw


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(UserError, match='unknown augmentation .*none, cifar10, svhn, stl10'):
        augment.get('mirror')
