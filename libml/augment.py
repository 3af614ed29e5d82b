"""Per-image TF augmentations: float32 [H,W,C] tensors in [-1, 1] in, same shape and range out."""

import math

import tensorflow.compat.v1 as tf

from libml.utils import UserError

KINDS = ('none', 'cifar10', 'svhn', 'stl10', 'color', 'cutout')

# Colour jitter of the reference (its augment_color_func), in units of the [0, 1] pixel range:
# its brightness delta 0.1 applies to [-1, 1] pixels, i.e. 0.05 here.
BRIGHTNESS_DELTA = 0.05
HUE_DELTA = 0.5
SATURATION_RANGE = (0.1, 3.)
CONTRAST_RANGE = (0.5, 1.5)

# Random erasing (Zhong et al., 2017): probability, rectangle area fraction and aspect ratio.
ERASE_PROBABILITY = 0.3
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def crop_padding(width):
    """Pixels of reflect padding before a random crop: 1/8 of the width, at least 1."""
    return max(1, width // 8)


def flip(image):
    """Mirror left-right with probability 1/2."""
    return tf.image.random_flip_left_right(image)


def shift(image):
    """Random crop of the original size after reflect padding by crop_padding(width) pixels."""
    height, width, channels = image.shape.as_list()
    pad = crop_padding(width)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode='REFLECT')
    return tf.random_crop(padded, [height, width, channels])


def color(image):
    """Random brightness and contrast; hue and saturation too when the image is RGB."""
    x = (image + 1) / 2  # the tf.image colour ops expect [0, 1]
    x = tf.image.random_brightness(x, BRIGHTNESS_DELTA)
    if image.shape.as_list()[2] == 3:
        x = tf.clip_by_value(x, 0, 1)
        x = tf.image.random_hue(x, HUE_DELTA)
        x = tf.image.random_saturation(x, *SATURATION_RANGE)
    x = tf.image.random_contrast(x, *CONTRAST_RANGE)
    return tf.clip_by_value(x, 0, 1) * 2 - 1


def erase(image):
    """With probability ERASE_PROBABILITY, fill a random rectangle with one random value.

    As the reference's eraser (Zhong et al.'s random erasing, pixel_level=False): one value drawn
    uniformly over the pixel range fills the whole rectangle; here drawn per image, in the graph.
    """
    height, width, channels = image.shape.as_list()
    area = tf.random.uniform([], *ERASE_AREA) * height * width
    aspect = tf.exp(tf.random.uniform([], math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])))
    box_h = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1, height)
    box_w = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1, width)
    top = tf.random.uniform([], 0, height - box_h + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, width - box_w + 1, dtype=tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = tf.logical_and(tf.logical_and(rows >= top, rows < top + box_h),
                            tf.logical_and(cols >= left, cols < left + box_w))
    apply = tf.random.uniform([]) < ERASE_PROBABILITY
    mask = tf.cast(tf.logical_and(inside, apply), tf.float32)[:, :, None]
    fill = tf.random.uniform([], -1, 1)
    return image * (1 - mask) + fill * mask


def _none(image):
    return image


def _cifar10(image):
    return shift(flip(image))


def _color(image):
    return shift(color(flip(image)))


def _cutout(image):
    return erase(_cifar10(image))


# stl10 is cifar10's flip + crop: the padding rule gives 12 px at width 96.
_FUNCTIONS = {'none': _none, 'cifar10': _cifar10, 'svhn': shift, 'stl10': _cifar10,
              'color': _color, 'cutout': _cutout}


# Offline copies (make_aug_copy.py): `cutout` erases only, since training adds flip and crop again.
_OFFLINE = dict(_FUNCTIONS, cutout=erase)


def get_offline(kind):
    """The augmentation make_aug_copy.py applies for `kind` (one of KINDS)."""
    get(kind)
    return _OFFLINE[kind]


def get(kind):
    """The augmentation function for `kind`, one of KINDS."""
    if kind not in _FUNCTIONS:
        raise UserError('unknown augmentation %r; choose one of %s' % (kind, ', '.join(KINDS)))
    return _FUNCTIONS[kind]
