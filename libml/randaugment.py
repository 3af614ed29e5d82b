"""FixMatch's RandAugment (`rac`: two random ops, then Cutout) in TF ops on uint8 images.

Every op gives, on the same uint8 image, what the reference's Pillow 9.5.0 function gives (proof:
tests/test_randaugment.py; the ops and what differs: docs/data.md#randaugment). A batch is done at
once, with static shapes and no Python op: a geometric op is a row of precomputed index maps, a
colour op a row of a lookup table, picked per image; the ops that need statistics of the image run
on a few gathered slots (colour_round).
"""

import collections
import functools
import math

import numpy as np
import tensorflow.compat.v1 as tf

from libml.augment import crop_padding

# The reference's op list (libml/augment.py RANDOM_POLICY_OPS), in its order: op k is drawn as k.
OPS = ('Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color', 'Contrast',
       'Brightness', 'Sharpness', 'ShearX', 'TranslateX', 'TranslateY', 'Posterize', 'ShearY')
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')
BLENDS = ('Color', 'Contrast', 'Brightness', 'Sharpness')  # Pillow's ImageEnhance: keep alpha
TO_RGB = ('AutoContrast', 'Equalize', 'Solarize', 'Posterize')  # via RGB: fill becomes opaque
COLOUR_OPS = tuple(name for name in OPS if name not in GEOMETRIC + ('Identity',))
NUM_OPS = 2  # ops per image (drawn with replacement)
LEVELS = 9  # levels 1..9: the reference's randint(1, 10)
PARAMETER_MAX = 10  # the reference's level scale
FULL_SIZE = 32  # images this wide or wider get the reference's absolute pixel sizes
CUTOUT = 16  # Cutout box side at FULL_SIZE
LUMA = (19595, 38470, 7471)  # Pillow's RGB -> L weights, in 1/65536

Draws = collections.namedtuple('Draws', 'ops levels applied negative centre')
Draws.__doc__ = """Random choices for N images: ops, levels, applied, negative [N, NUM_OPS] int32
(op index into OPS, level 1..9, 1 if the op runs, 1 for a negative magnitude); centre [N, 2] int32
(Cutout's row and column)."""


# ---- magnitudes, as the reference computes them from a level ----

def enhance_factor(level):
    """Color / Contrast / Brightness / Sharpness factor: 0.28 .. 1.72."""
    return float(level) * 1.8 / PARAMETER_MAX + .1


def rotate_degrees(level):
    """Rotation angle before its sign: 3 .. 27 degrees."""
    return int(level * 30 / PARAMETER_MAX)


def shear_factor(level):
    """Shear coefficient before its sign: 0.03 .. 0.27."""
    return float(level) * 0.3 / PARAMETER_MAX


def translate_pixels(level, side):
    """Shift before its sign: the reference's 1..9 px, scaled by side/32 on images under 32 px."""
    return int(level * 10 / PARAMETER_MAX * min(side, FULL_SIZE) / FULL_SIZE)


def solarize_threshold(level):
    """Values at or above it are inverted: 231 .. 26."""
    return 256 - int(level * 256 / PARAMETER_MAX)


def posterize_bits(level):
    """Bits kept per channel: 4, 4, 3, 3, 2, 2, 2, 1, 1."""
    return 4 - int(level * 4 / PARAMETER_MAX)


def cutout_size(height, width):
    """Cutout box side: the reference's 16 px, or half the shorter side on images under 32 px."""
    return CUTOUT * min(height, width, FULL_SIZE) // FULL_SIZE


# ---- Pillow's nearest-neighbour affine warp, as index maps ----

def _fixed(value):
    """Pillow's 16.16 fixed-point form of a coefficient (round half up)."""
    return int(math.floor(value * 65536.0 + 0.5))


def affine_source(data, height, width):
    """Flat source index of every output pixel under Pillow's AFFINE `data` with NEAREST; H*W
    marks fill. Pillow walks translations in floats and other maps in 16.16 fixed point."""
    a0, a1, a2, a3, a4, a5 = data
    rows, cols = np.mgrid[0:height, 0:width].astype(np.int64)
    if a1 == 0 and a3 == 0:
        src_x = np.floor(a2 + a0 * 0.5 + cols * a0).astype(np.int64)
        src_y = np.floor(a5 + a4 * 0.5 + rows * a4).astype(np.int64)
    else:
        src_x = (_fixed(a2 + a0 * 0.5 + a1 * 0.5) + rows * _fixed(a1) + cols * _fixed(a0)) >> 16
        src_y = (_fixed(a5 + a3 * 0.5 + a4 * 0.5) + rows * _fixed(a4) + cols * _fixed(a3)) >> 16
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    return np.where(inside, src_y * width + src_x, height * width).reshape(-1)


def rotate_data(degrees, height, width):
    """Pillow's AFFINE data for Image.rotate(degrees) about the image centre."""
    theta = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(theta), 15), round(math.sin(theta), 15)
    a, b, d, e = cos, sin, round(-math.sin(theta), 15), cos
    centre_x, centre_y = width / 2.0, height / 2.0
    c = a * -centre_x + b * -centre_y + centre_x
    f = d * -centre_x + e * -centre_y + centre_y
    return a, b, c, d, e, f


def geometric_data(name, level, negative, height, width):
    """Pillow's AFFINE data of geometric op `name` at `level`, negated if `negative`."""
    sign = -1 if negative else 1
    if name == 'Rotate':
        return rotate_data(sign * rotate_degrees(level), height, width)
    if name in ('ShearX', 'ShearY'):
        shear = sign * shear_factor(level)
        return (1, shear, 0, 0, 1, 0) if name == 'ShearX' else (1, 0, 0, shear, 1, 0)
    if name == 'TranslateX':
        return 1, 0, sign * translate_pixels(level, width), 0, 1, 0
    return 1, 0, 0, 0, 1, sign * translate_pixels(level, height)


def _geometric_row(name, level, negative):
    """Row of an op's index map in geometric_maps (0: identity)."""
    return 1 + (GEOMETRIC.index(name) * LEVELS + level - 1) * 2 + negative


@functools.lru_cache(maxsize=None)
def geometric_maps(height, width):
    """[1 + 5*9*2, H*W] int32: identity, then every geometric op, level and sign."""
    maps = [np.arange(height * width)]
    for name in GEOMETRIC:
        for level in range(1, LEVELS + 1):
            for negative in (0, 1):
                maps.append(affine_source(geometric_data(name, level, negative, height, width),
                                          height, width))
    return np.stack(maps).astype(np.int32)


# ---- the value table: fixed lookup rows, then the blend tables ----

def _blend(degenerate, image, factor):
    """Pillow's Image.blend on uint8 values: float32 arithmetic, truncated, clipped."""
    f = np.float32(factor)
    out = np.float32(degenerate) + f * (np.float32(image) - np.float32(degenerate))
    return np.clip(np.trunc(out), 0, 255).astype(np.int32)


def _value_rows():
    """[1 + 9 + 9, 256]: identity, Solarize at levels 1..9, Posterize at levels 1..9."""
    values = np.arange(256)
    rows = [values]
    rows += [np.where(values < solarize_threshold(level), values, 255 - values)
             for level in range(1, LEVELS + 1)]
    rows += [values & ~(2 ** (8 - posterize_bits(level)) - 1) for level in range(1, LEVELS + 1)]
    return np.stack(rows).astype(np.int32)


_SOLARIZE_ROW, _POSTERIZE_ROW = 1, 1 + LEVELS
_BLEND_START = (1 + 2 * LEVELS) * 256  # blend table of level L, degenerate d, value v at
# _BLEND_START + ((L - 1) * 256 + d) * 256 + v; the per-image dynamic rows follow all that.
_DYNAMIC_START = _BLEND_START + LEVELS * 256 * 256


@functools.lru_cache(maxsize=None)
def value_table():
    """The fixed lookup rows and Pillow's blend of every degenerate d and value v at each level."""
    degenerate, image = np.mgrid[0:256, 0:256]
    blends = [_blend(degenerate, image, enhance_factor(level)) for level in range(1, LEVELS + 1)]
    table = np.concatenate([_value_rows().reshape(-1)] + [b.reshape(-1) for b in blends])
    assert table.size == _DYNAMIC_START
    return table.astype(np.int32)


def _plan():
    """[14, 9] int32: where the value_table row of each (op, level) starts (-1: the image's own
    AutoContrast / Equalize rows, appended after the table; 0: identity)."""
    base = np.zeros((len(OPS), LEVELS), np.int32)
    for level in range(1, LEVELS + 1):
        blend = _BLEND_START + (level - 1) * 256 * 256
        base[OPS.index('Solarize'), level - 1] = (_SOLARIZE_ROW + level - 1) * 256
        base[OPS.index('Posterize'), level - 1] = (_POSTERIZE_ROW + level - 1) * 256
        for name in BLENDS:
            base[OPS.index(name), level - 1] = blend
    for name in ('AutoContrast', 'Equalize'):
        base[OPS.index(name)] = -1
    return base


# ---- per-image statistics the colour ops need ----

def _select(flag, if_true, if_false):
    """flag ? if_true : if_false for 0/1 int32 `flag` that broadcasts; cheaper than a
    broadcasting where on CPU."""
    return if_false + flag * (if_true - if_false)


def _flag(names, ops):
    """[N] int32: 1 where op index ops[i] is one of `names`."""
    return tf.gather(tf.constant([int(name in names) for name in OPS]), ops)


def luminance(pixels):
    """Pillow's L of [N, H, W, C] int32 pixels: [N, H, W] int32 (C=1: the channel itself)."""
    if pixels.shape.as_list()[-1] == 1:
        return pixels[..., 0]
    # the float32 dot product is exact: every partial sum is an integer below 2^24
    weighted = tf.tensordot(tf.cast(pixels, tf.float32), np.float32(LUMA), [[3], [0]])
    return tf.cast(tf.floor((weighted + 32768.0) * (1.0 / 65536)), tf.int32)


def smooth_change(pixels):
    """Pillow's SMOOTH filter (3x3 kernel of ones, 5 in the centre, divisor 13) of [N, H, W, C]
    int32 pixels minus the pixels: round(sum/13) - v inside, 0 on the border (Pillow copies it)."""
    batch = tf.shape(pixels)[0]
    height, width, channels = pixels.shape.as_list()[1:]
    flat = tf.reshape(pixels, [batch, height, width * channels])
    rows = flat[:, :-2] + flat[:, 1:-1] + flat[:, 2:]
    step = channels
    box = rows[:, :, :-2 * step] + rows[:, :, step:-step] + rows[:, :, 2 * step:]
    centre = flat[:, 1:-1, step:-step]
    change = (box + 4 * centre) * 2 + 13  # round(total/13) = (2*total + 13) // 26
    change = change // 26 - centre
    side = tf.zeros([batch, height - 2, step], tf.int32)
    change = tf.concat([side, change, side], 2)
    edge = tf.zeros([batch, 1, width * channels], tf.int32)
    return tf.reshape(tf.concat([edge, change, edge], 1), [batch, height, width, channels])


def _histograms(pixels):
    """[N, C, 256] int32 counts of each value per image and channel."""
    batch = tf.shape(pixels)[0]
    channels = pixels.shape.as_list()[-1]
    ids = pixels + tf.reshape(tf.range(batch * channels) * 256, [-1, 1, 1, channels])
    size = batch * channels * 256
    counts = tf.math.bincount(ids, minlength=size, maxlength=size)
    return tf.reshape(counts, [-1, channels, 256])


def _autocontrast_rows(low, high):
    """[N, C, 256] int32: ImageOps.autocontrast's lookup per channel (identity when flat)."""
    values = tf.constant(np.arange(256, dtype=np.float64))
    low, high = tf.cast(low, tf.float64)[..., None], tf.cast(high, tf.float64)[..., None]
    scale = 255.0 / tf.maximum(high - low, 1.0)
    # int(v*scale + offset) in Python's float64 order; MulNoNan (same product) keeps grappler from
    # hoisting scale out as (v - low)*scale, which rounds differently (e.g. 51.0 for 50.99..)
    offset = -low * scale
    mapped = tf.cast(tf.math.multiply_no_nan(values, scale) + offset, tf.int32)
    varied = tf.cast(high > low, tf.int32)
    return _select(varied, tf.clip_by_value(mapped, 0, 255), tf.range(256))


def _equalize_rows(counts, high, total):
    """[N, C, 256] int32: ImageOps.equalize's lookup per channel (identity when step is 0);
    `total`: pixels per image."""
    last_count = tf.reduce_sum(counts * tf.one_hot(high, 256, dtype=tf.int32), axis=-1)
    step = ((total - last_count) // 255)[..., None]
    below = tf.cumsum(counts, axis=-1, exclusive=True)
    mapped = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
    return _select(tf.cast(step > 0, tf.int32), mapped, tf.range(256))


def _dynamic_rows(pixels, equalize):
    """[N, C, 256] int32: each image's Equalize lookup where equalize[i], else AutoContrast's."""
    counts = _histograms(pixels)
    present = tf.cast(counts > 0, tf.int32)
    low = tf.argmax(present, axis=-1, output_type=tf.int32)
    high = tf.argmax(present * tf.range(1, 257), axis=-1, output_type=tf.int32)
    area = pixels.shape.as_list()[1] * pixels.shape.as_list()[2]
    return _select(equalize[:, None, None], _equalize_rows(counts, high, area),
                   _autocontrast_rows(low, high))


def _contrast_mean(lum):
    """[N] int32: ImageEnhance.Contrast's grey level, int(mean(L) + 0.5)."""
    height, width = lum.shape.as_list()[1:3]
    total = tf.cast(tf.reduce_sum(lum, axis=[1, 2]), tf.float64)
    return tf.cast(tf.floor(total / float(height * width) + 0.5), tf.int32)


# ---- one round: each image gets one op ----

def _colour_values(pixels, ops, levels, table):
    """Colour op ops[i] at levels[i] on image i of [N, H, W, C] int32 pixels, any op; geometric
    ops and Identity leave the image as it is. `table`: value_table() as a tensor."""
    channels = pixels.shape.as_list()[-1]
    base = tf.gather(tf.reshape(tf.constant(_plan()), [-1]), ops * LEVELS + levels - 1)
    lum = luminance(pixels)
    base += _flag(['Contrast'], ops) * _contrast_mean(lum) * 256
    dynamic = _flag(['AutoContrast', 'Equalize'], ops)[:, None]
    first = tf.reshape(_DYNAMIC_START + tf.range(tf.shape(pixels)[0] * channels) * 256,
                       [-1, channels])
    row = _select(dynamic, first, base[:, None])
    # the blend ops with a per-pixel degenerate image d read their table at 256*d + v
    sharp = _flag(['Sharpness'], ops)[:, None, None, None]
    sharp_pixels = sharp * pixels
    degenerate = sharp_pixels + smooth_change(sharp_pixels)
    degenerate += (_flag(['Color'], ops)[:, None, None] * lum)[..., None]
    index = row[:, None, None, :] + degenerate * 256 + pixels
    table = tf.concat([table, tf.reshape(_dynamic_rows(pixels, _flag(['Equalize'], ops)), [-1])],
                      0)
    return tf.gather(table, index)


def default_capacity(batch):
    """Slots per batch for the colour ops (drawn for 8/28 = 29 % of the images per round): 3/8
    of the batch and 16 more (overflow is a 5-sigma event at 256), every image of a batch up to
    64, 64 when the batch size is unknown."""
    if batch is None:
        return 64
    return batch if batch <= 64 else batch * 3 // 8 + 16


def colour_round(pixels, opaque, ops, levels, capacity=None):
    """Apply colour op ops[i] at levels[i] to image i of [N, H, W, C] int32 pixels and their
    [N, H, W] int32 opacity (0: fill); geometric ops and Identity leave the image as it is.

    The images with a colour op are gathered into `capacity` slots (image 0 fills empty ones),
    computed there and scattered back; a batch with more falls back to computing every image,
    so the result never depends on `capacity`."""
    batch = pixels.shape.as_list()[0]
    capacity = default_capacity(batch) if capacity is None else capacity
    opaque = tf.maximum(opaque, _flag(TO_RGB, ops)[:, None, None])
    table = tf.constant(value_table())  # one copy for both branches (2.4 MB)
    if batch is not None and capacity >= batch:
        return _colour_values(pixels, ops, levels, table), opaque
    needs = _flag(COLOUR_OPS, ops)
    rank = tf.cumsum(needs, exclusive=True)
    slot = tf.where_v2(needs > 0, tf.minimum(rank, capacity), capacity)
    images = tf.math.unsorted_segment_max(tf.range(tf.shape(needs)[0]), slot, capacity + 1)
    images = tf.maximum(images[:capacity], 0)  # an empty slot (lowest int) takes image 0

    def in_slots():
        values = _colour_values(tf.gather(pixels, images), tf.gather(ops, images),
                                tf.gather(levels, images), table)
        return tf.tensor_scatter_nd_update(pixels, images[:, None], values)

    pixels = tf.cond(tf.reduce_sum(needs) <= capacity, in_slots,
                     lambda: _colour_values(pixels, ops, levels, table))
    return pixels, opaque


def _geometric_rows():
    """[14 * 9 * 2] int32: row of geometric_maps for (op, level, negative); 0 for other ops."""
    rows = np.zeros((len(OPS), LEVELS, 2), np.int32)
    for name in GEOMETRIC:
        for level in range(1, LEVELS + 1):
            for negative in (0, 1):
                rows[OPS.index(name), level - 1, negative] = _geometric_row(name, level, negative)
    return rows.reshape(-1)


def geometric_round(pixels, opaque, ops, levels, negative):
    """Apply geometric op ops[i] (sign from negative[i]) to image i; other ops leave it as it is.
    Pixels mapped from outside the image become fill: value 0, opacity 0."""
    batch = tf.shape(pixels)[0]
    height, width, channels = pixels.shape.as_list()[1:]
    area = height * width
    row = tf.gather(tf.constant(_geometric_rows()), (ops * LEVELS + levels - 1) * 2 + negative)
    source = tf.gather(tf.constant(geometric_maps(height, width)), row)
    source += tf.range(batch)[:, None] * (area + 1)
    flat = tf.concat([tf.reshape(pixels, [batch, area, channels]),
                      tf.zeros([batch, 1, channels], tf.int32)], 1)
    pixels = tf.reshape(tf.gather(tf.reshape(flat, [-1, channels]), source),
                        [batch, height, width, channels])
    alpha = tf.concat([tf.reshape(opaque, [batch, area]), tf.zeros([batch, 1], tf.int32)], 1)
    opaque = tf.reshape(tf.gather(tf.reshape(alpha, [-1]), source), [batch, height, width])
    return pixels, opaque


def apply_ops(pixels, opaque, ops, levels, negative, capacity=None):
    """One policy step for a batch: op ops[i] at levels[i] (sign negative[i]) on image i."""
    pixels, opaque = geometric_round(pixels, opaque, ops, levels, negative)
    return colour_round(pixels, opaque, ops, levels, capacity)


# ---- the policy, Cutout and the strong view ----

def draw(batch, height, width):
    """Draws for `batch` images: 2 ops with replacement, levels 1..9, each op applied with
    probability 1/2, random signs, a Cutout centre anywhere in the image."""
    ranges = [len(OPS)] * NUM_OPS + [LEVELS] * NUM_OPS + [2] * (2 * NUM_OPS) + [height, width]
    # one draw in [0, 2^30) per choice; the remainders' bias is below 1e-7
    values = tf.random.uniform([batch, len(ranges)], 0, 1 << 30, dtype=tf.int32) % ranges
    n = NUM_OPS
    return Draws(ops=values[:, :n], levels=values[:, n:2 * n] + 1,
                 applied=1 - values[:, 2 * n:3 * n], negative=values[:, 3 * n:4 * n],
                 centre=values[:, 4 * n:])


def cutout_box(centre, height, width):
    """[N, H, W] bool: Cutout's box about each centre (row, col), clipped to the image."""
    half = cutout_size(height, width) // 2
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    top, left = centre[:, 0, None, None], centre[:, 1, None, None]
    return tf.logical_and(tf.logical_and(rows >= top - half, rows < top + half),
                          tf.logical_and(cols >= left - half, cols < left + half))


def augment(images, draws, capacity=None):
    """[N, H, W, C] uint8 -> float32 [N, H, W, C] in [-1, 1]: the policy of `draws`, then Cutout
    (fill and cut pixels 0.0, grey) as the reference's apply_policy + cutout_numpy. `capacity`:
    see colour_round."""
    height, width = images.shape.as_list()[1:3]
    pixels = tf.cast(images, tf.int32)
    opaque = tf.ones(tf.shape(pixels)[:3], tf.int32)
    for k in range(NUM_OPS):
        ops = draws.ops[:, k] * draws.applied[:, k]  # an op not applied is Identity (index 0)
        pixels, opaque = apply_ops(pixels, opaque, ops, draws.levels[:, k], draws.negative[:, k],
                                   capacity)
    kept = opaque * (1 - tf.cast(cutout_box(draws.centre, height, width), tf.int32))
    # the reference's pil_unwrap, (v/255 - 0.5)/0.5 in float64, then float32: (v - 127.5)/127.5
    # in float32 gives the same 256 floats; DivNoNan divides, where a Div by a constant becomes
    # a multiply by its reciprocal, one ulp off for 126 values
    values = tf.math.divide_no_nan(tf.cast(pixels, tf.float32) - 127.5, 127.5)
    return values * tf.cast(kept, tf.float32)[..., None]


def _reflect(positions, size):
    """Source index of each padded position under REFLECT padding (no edge repeat)."""
    positions = np.abs(positions)
    return np.where(positions >= size, 2 * (size - 1) - positions, positions)


def weak_views(images):
    """[N, H, W, C] uint8 -> uint8: libml.augment's `cifar10` weak view (flip with probability
    1/2, then a random crop after REFLECT padding by crop_padding(W)) for a batch, as one gather."""
    batch = tf.shape(images)[0]
    height, width, channels = images.shape.as_list()[1:]
    pad = crop_padding(width)
    offsets = np.arange(2 * pad + 1)[:, None]
    rows = _reflect(offsets + np.arange(height) - pad, height)  # [offset, y]
    cols = _reflect(offsets + np.arange(width) - pad, width)  # [offset, x]
    cols = np.stack([cols, width - 1 - cols])  # [flip, offset, x]: flip first, then crop
    ranges = [2 * pad + 1, 2 * pad + 1, 2]  # top, left, flip
    draws = tf.random.uniform([batch, 3], 0, 1 << 30, dtype=tf.int32) % ranges
    source = (tf.gather(tf.constant(rows.astype(np.int32) * width), draws[:, 0])[:, :, None]
              + tf.gather(tf.constant(cols.reshape(-1, width).astype(np.int32)),
                          draws[:, 2] * (2 * pad + 1) + draws[:, 1])[:, None, :])
    source += tf.range(batch)[:, None, None] * (height * width)
    return tf.gather(tf.reshape(images, [-1, channels]), source)


def strong_views(images):
    """[N, H, W, C] uint8 weak views -> float32 [N, H, W, C] in [-1, 1] strong views."""
    height, width = images.shape.as_list()[1:3]
    return augment(images, draw(tf.shape(images)[0], height, width))


def strong_view(image):
    """[H, W, C] uint8 weak view -> float32 [H, W, C] in [-1, 1] strong view."""
    return strong_views(image[None])[0]


def apply_op(name, image, level, negative=False):
    """One op on a [H, W, C] uint8 image: (uint8 pixels [H, W, C], bool opaque [H, W]), as the
    reference's NAME_TO_TRANSFORM[name].xform on the image as RGBA (fill: transparent, 0).
    `name` may be an op index tensor; `level` and `negative` may be scalar tensors."""
    pixels = tf.cast(image, tf.int32)[None]
    opaque = tf.ones(tf.shape(pixels)[:3], tf.int32)
    op = OPS.index(name) if isinstance(name, str) else name
    as_batch = lambda value: tf.reshape(tf.cast(value, tf.int32), [1])
    pixels, opaque = apply_ops(pixels, opaque, as_batch(op), as_batch(level), as_batch(negative))
    return tf.cast(pixels[0], tf.uint8), tf.cast(opaque[0], tf.bool)
