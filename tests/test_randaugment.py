"""libml/randaugment.py: every op, at every level and sign, equals google-research/fixmatch's own
Pillow function on the same uint8 image; a whole 2-op policy + Cutout equals its apply_policy +
cutout_numpy with the same draws; the draws have the policy's statistics; no Python op anywhere.

The comparisons import the reference's third_party/auto_augment/augmentations.py (numpy and Pillow
only) from its tarball in ../shared: they skip when it is absent. They pass on Pillow 9.5.0 (the TF
1.15 leg) and 13.0.0 (the TF 2.x leg), whose functions agree on these ops."""

import ast
import glob
import importlib.util
import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from conftest import ROOT
from libml import graph_audit, randaugment as ra

SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
REFERENCE = os.path.join(SHARED, 'reference', 'google-research-fixmatch-d4985a1.tar.gz')
CIFAR = os.path.join(SHARED, 'data', 'cifar10-jpeg.tar.gz')
Image = pytest.importorskip('PIL.Image')
# Pillow 13 deprecates getdata, which the reference's pil_unwrap calls
pytestmark = pytest.mark.filterwarnings('ignore:Image.Image.getdata:DeprecationWarning')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The reference's augmentations module and its RANDOM_POLICY_OPS (read, not imported)."""
    if not os.path.exists(REFERENCE):
        pytest.skip('%s absent: the reference comparisons need it' % REFERENCE)
    folder = str(tmp_path_factory.mktemp('fixmatch'))
    with tarfile.open(REFERENCE) as archive:
        archive.extractall(folder, members=[m for m in archive.getmembers() if m.name.endswith(
            ('auto_augment/augmentations.py', 'libml/augment.py'))])
    path = glob.glob(os.path.join(folder, '*', 'third_party', 'auto_augment', 'augmentations.py'))
    spec = importlib.util.spec_from_file_location('fixmatch_augmentations', path[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(glob.glob(os.path.join(folder, '*', 'libml', 'augment.py'))[0]) as f:
        tree = ast.parse(f.read())
    module.RANDOM_POLICY_OPS = [ast.literal_eval(node.value) for node in ast.walk(tree)
                                if isinstance(node, ast.Assign)
                                and getattr(node.targets[0], 'id', '') == 'RANDOM_POLICY_OPS'][0]
    return module


class Draws(object):
    """Stands in for the reference's `random` module: hands out the given random() values."""

    def __init__(self, values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def sample_images():
    """[K, 32, 32, 3] uint8: noise, gradients, a flat and a sparse image (Equalize's small-step
    and identity cases), and six CIFAR-10 JPEGs when ../shared has them."""
    rng = np.random.RandomState(0)
    ramp = np.linspace(0, 255, 32)
    gradient = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2,
                         np.tile(ramp, (32, 1))], -1)
    images = [rng.randint(0, 256, (32, 32, 3)), gradient, np.full((32, 32, 3), 7),
              (rng.rand(32, 32, 3) > 0.9) * 200, rng.randint(100, 104, (32, 32, 3))]
    if os.path.exists(CIFAR):
        with tarfile.open(CIFAR) as archive:
            for member in archive:
                if member.name.endswith('.jpg'):
                    data = archive.extractfile(member).read()
                    images.append(np.array(Image.open(io.BytesIO(data)).convert('RGB')))
                    if len(images) == 11:
                        break
    return np.stack(images).astype(np.uint8)


def session():
    return tf.Session(config=tf.ConfigProto(intra_op_parallelism_threads=1,
                                            inter_op_parallelism_threads=1))


def test_the_op_list_is_the_references(reference):
    assert list(ra.OPS) == list(reference.RANDOM_POLICY_OPS)


def test_every_op_at_every_level_and_sign_equals_the_pillow_function(reference):
    images = sample_images()
    with tf.Graph().as_default():
        batch = tf.placeholder(tf.uint8, [None, 32, 32, 3])
        op, level, negative = (tf.placeholder(tf.int32, []) for _ in range(3))
        count = tf.shape(batch)[0]
        pixels, opaque = ra.apply_ops(
            tf.cast(batch, tf.int32), tf.ones([count, 32, 32], tf.int32),
            tf.fill([count], op), tf.fill([count], level), tf.fill([count], negative))
        with session() as sess:
            for name in ra.OPS:
                for lev in range(1, ra.LEVELS + 1):
                    for neg in (0, 1):
                        got = sess.run([pixels, opaque], {batch: images, op: ra.OPS.index(name),
                                                          level: lev, negative: neg})
                        reference.random = Draws([0.9 if neg else 0.1] * len(images))
                        for k, image in enumerate(images):
                            rgba = np.array(reference.NAME_TO_TRANSFORM[name].xform(
                                Image.fromarray(image).convert('RGBA'), lev))
                            where = (name, lev, neg, k)
                            assert set(np.unique(rgba[..., 3])) <= {0, 255}, where
                            np.testing.assert_array_equal(got[0][k], rgba[..., :3], str(where))
                            np.testing.assert_array_equal(got[1][k], rgba[..., 3] // 255,
                                                          str(where))


@pytest.mark.parametrize('height,width', [(8, 8), (12, 20)])
def test_geometric_ops_warp_as_pillow_on_other_sizes(height, width):
    """Index maps equal Pillow's own AFFINE/rotate warp (with our magnitudes) on small and
    non-square images; pixels coded by position make every source index visible."""
    rows, cols = np.mgrid[0:height, 0:width]
    coded = np.stack([rows * 10, cols * 10, np.full_like(rows, 255)], -1).astype(np.uint8)
    with tf.Graph().as_default():
        op, level, negative = (tf.placeholder(tf.int32, []) for _ in range(3))
        out = ra.apply_op(op, tf.constant(coded), level, negative)
        with session() as sess:
            for name in ra.GEOMETRIC:
                for lev in range(1, ra.LEVELS + 1):
                    for neg in (0, 1):
                        pixels, opaque = sess.run(out, {op: ra.OPS.index(name), level: lev,
                                                        negative: neg})
                        image = Image.fromarray(coded).convert('RGBA')
                        data = ra.geometric_data(name, lev, neg, height, width)
                        if name == 'Rotate':
                            degrees = (-1 if neg else 1) * ra.rotate_degrees(lev)
                            rgba = np.array(image.rotate(degrees))
                        else:
                            rgba = np.array(image.transform(image.size, Image.AFFINE, data))
                        np.testing.assert_array_equal(pixels, rgba[..., :3], str((name, lev, neg)))
                        np.testing.assert_array_equal(opaque, rgba[..., 3] == 255)


def centre_of(seed, height, width):
    """The Cutout centre the reference's cutout_numpy draws after np.random.seed(seed)."""
    np.random.seed(seed)
    return np.random.randint(0, height), np.random.randint(0, width)


def test_two_op_policies_and_cutout_equal_apply_policy_and_cutout_numpy(reference):
    """Every ordered pair of ops (both applied, random levels and signs), then 60 fully random
    policies: float32 views equal, fill and Cutout grey included."""
    rng = np.random.RandomState(1)
    pairs = [(a, b) for a in range(len(ra.OPS)) for b in range(len(ra.OPS))]
    count = len(pairs) + 60
    ops = np.concatenate([np.array(pairs), rng.randint(0, len(ra.OPS), (60, 2))])
    applied = np.concatenate([np.ones((len(pairs), 2), int), rng.randint(0, 2, (60, 2))])
    levels, negative = rng.randint(1, 10, (count, 2)), rng.randint(0, 2, (count, 2))
    centre = np.array([centre_of(i, 32, 32) for i in range(count)])
    images = sample_images()
    images = images[np.arange(count) % len(images)]
    with tf.Graph().as_default():
        draws = ra.Draws(*[tf.constant(v.astype(np.int32))
                           for v in (ops, levels, applied, negative, centre)])
        with session() as sess:
            ours = sess.run(ra.augment(tf.constant(images), draws))
    for i in range(count):
        values = []
        for k in range(2):
            values.append(0.0 if applied[i, k] else 0.99)  # applied when random() < 0.5
            if applied[i, k] and ra.OPS[ops[i, k]] in ra.GEOMETRIC:
                values.append(0.9 if negative[i, k] else 0.1)  # negative when random() > 0.5
        reference.random = Draws(values)
        policy = [(ra.OPS[ops[i, k]], 0.5, levels[i, k]) for k in range(2)]
        # a float that pil_wrap truncates back to the same uint8
        x = (images[i].astype(np.float64) + 0.5) / 127.5 - 1
        np.random.seed(i)
        expected = reference.cutout_numpy(reference.apply_policy(policy, x)).astype('f')
        assert not reference.random.values
        np.testing.assert_array_equal(ours[i], expected, str((i, policy, applied[i], negative[i])))


def test_the_result_does_not_depend_on_the_slots_for_colour_ops():
    """Slots for the colour ops: too few (the fall-back), enough, and one per image give the same
    views."""
    images = np.random.RandomState(3).randint(0, 256, (96, 16, 16, 3)).astype(np.uint8)
    with tf.Graph().as_default():
        tf.set_random_seed(7)
        draws = ra.draw(96, 16, 16)
        views = [ra.augment(tf.constant(images), draws, capacity) for capacity in (2, 40, 96)]
        counts = tf.reduce_sum(ra._flag(ra.COLOUR_OPS, draws.ops * draws.applied), 0)
        with session() as sess:
            (few, enough, every), needs = sess.run([views, counts])
    assert 2 < needs.min() and needs.max() <= 40, needs  # both branches ran
    np.testing.assert_array_equal(few, every)
    np.testing.assert_array_equal(enough, every)


def test_every_uint8_value_unwraps_to_the_references_float():
    """Identity policies: each of the 256 values becomes pil_unwrap's float32; Cutout's box 0."""
    image = (np.arange(32 * 32) % 256).reshape(1, 32, 32, 1).astype(np.uint8)
    zeros = np.zeros((1, 2), np.int32)
    with tf.Graph().as_default(), session() as sess:
        draws = ra.Draws(zeros, zeros + 1, zeros, zeros, tf.constant([[0, 0]]))
        view = sess.run(ra.augment(tf.constant(image), draws))[0, :, :, 0]
    expected = ((image[0, :, :, 0] / 255.0 - 0.5) / 0.5).astype(np.float32)
    expected[:8, :8] = 0
    np.testing.assert_array_equal(view, expected)
    assert set(image[0, 8:, :, 0].reshape(-1)) == set(range(256))


def test_weak_views_are_flips_and_crops_of_the_reflect_padding():
    image = np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    with tf.Graph().as_default(), session() as sess:
        tf.set_random_seed(0)
        views = sess.run(ra.weak_views(tf.constant(np.repeat(image[None], 3000, 0))))
    crops = {}
    for flip in (0, 1):
        padded = np.pad(image[:, ::-1] if flip else image, [(4, 4), (4, 4), (0, 0)], 'reflect')
        for top in range(9):
            for left in range(9):
                crops[padded[top:top + 32, left:left + 32].tobytes()] = (flip, top, left)
    seen = [crops.get(view.tobytes()) for view in views]
    assert None not in seen and len(set(seen)) == 162  # all 2 x 9 x 9 weak views occur


def run_views(images, seed):
    with tf.Graph().as_default():
        tf.set_random_seed(seed)
        views = ra.strong_views(tf.constant(images))
        with session() as sess:
            return sess.run(views)


@pytest.mark.parametrize('shape', [(32, 32, 3), (8, 8, 1)])
def test_strong_views_are_float_views_in_range_and_seeded(shape):
    images = np.random.RandomState(0).randint(0, 256, (16,) + shape).astype(np.uint8)
    first = run_views(images, seed=3)
    assert first.shape == images.shape and first.dtype == np.float32
    grid = np.append((np.arange(256) / 255.0 - 0.5) / 0.5, 0.0).astype(np.float32)
    assert np.isin(first, grid).all() and first.min() >= -1 and first.max() <= 1
    np.testing.assert_array_equal(first, run_views(images, seed=3))
    assert (first != run_views(images, seed=4)).any()


def test_draws_have_the_policy_statistics():
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        with session() as sess:
            d = sess.run(ra.draw(20000, 32, 24))
    assert d.ops.shape == (20000, 2)
    for values, size in ((d.ops, 14), (d.levels - 1, 9), (d.applied, 2), (d.negative, 2),
                         (d.centre[:, 0], 32), (d.centre[:, 1], 24)):
        counts = np.bincount(values.reshape(-1), minlength=size)
        assert len(counts) == size  # nothing outside the range
        expected = values.size / size
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected), counts
    assert d.levels.min() == 1 and d.levels.max() == 9


def test_cutout_box_is_the_references_16_px_and_half_the_side_on_small_images():
    assert (ra.cutout_size(32, 32), ra.cutout_size(96, 96), ra.cutout_size(8, 8)) == (16, 16, 4)
    assert [ra.translate_pixels(level, 32) for level in (1, 9)] == [1, 9]
    assert [ra.translate_pixels(level, 8) for level in (1, 4, 9)] == [0, 1, 2]
    with tf.Graph().as_default(), session() as sess:
        boxes = sess.run(ra.cutout_box(tf.constant([[16, 16], [0, 0], [31, 5]]), 32, 32))
        small = sess.run(ra.cutout_box(tf.constant([[4, 4], [0, 7]]), 8, 8))
    assert boxes.sum(axis=(1, 2)).tolist() == [256, 64, 9 * 13]
    assert boxes[0, 8:24, 8:24].all() and not boxes[0, 24:].any()
    assert small.sum(axis=(1, 2)).tolist() == [16, 2 * 3]


def test_grey_images_get_the_colour_result_of_their_grey_copy():
    """C=1 runs as its RGB copy would (Pillow's L of grey RGB is the grey value)."""
    grey = np.random.RandomState(2).randint(0, 256, (40, 8, 8, 1)).astype(np.uint8)
    with tf.Graph().as_default():
        tf.set_random_seed(5)
        draws = ra.draw(40, 8, 8)
        views = [ra.augment(tf.constant(x), draws) for x in (grey, np.tile(grey, [1, 1, 1, 3]))]
        with session() as sess:
            one, three = sess.run(views)
    np.testing.assert_array_equal(np.repeat(one, 3, axis=-1), three)


def test_per_image_map_in_tf_data_has_no_python_op():
    images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    with tf.Graph().as_default() as graph:
        per_image = tf.data.Dataset.from_tensor_slices(images).map(ra.strong_view).batch(3)
        batched = tf.data.Dataset.from_tensor_slices(images).batch(3).map(ra.strong_views)
        outputs = [tf.data.make_one_shot_iterator(d).get_next() for d in (per_image, batched)]
        assert graph_audit.python_op_problems(graph) == []
        with session() as sess:
            for view in sess.run(outputs):
                assert view.shape == (3, 32, 32, 3) and view.dtype == np.float32
