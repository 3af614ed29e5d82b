"""Classifier networks: the reference's wide ResNet, shake-shake ResNet and conv net, and a small
conv net with batch norm for quick runs."""

import functools
import itertools

import tensorflow.compat.v1 as tf

from libml import layers
from libml.utils import UserError, ilog2

ARCHS = ('resnet', 'shake', 'convnet', 'smallconv')


def resnet(x, nclass, bn, scales, filters, repeat):
    """Wide ResNet of MixMatch (WRN-28-2 at filters=32, repeat=4, scales=3)."""
    name = layers.LayerNamer()

    def residual(x0, channels, stride, activate_before_residual):
        x = layers.leaky_relu(bn(x0, name=name('batch_normalization')))
        if activate_before_residual:
            x0 = x
        x = layers.conv2d(x, channels, 3, name('conv2d'), stride=stride)
        x = layers.leaky_relu(bn(x, name=name('batch_normalization')))
        x = layers.conv2d(x, channels, 3, name('conv2d'))
        if int(x0.shape[-1]) != channels:
            x0 = layers.conv2d(x0, channels, 1, name('conv2d'), stride=stride)
        return x0 + x

    y = layers.conv2d(x, 16, 3, name('conv2d'))
    for scale in range(scales):
        channels = filters << scale
        y = residual(y, channels, stride=2 if scale else 1, activate_before_residual=scale == 0)
        for _ in range(repeat - 1):
            y = residual(y, channels, stride=1, activate_before_residual=False)
    y = layers.leaky_relu(bn(y, name=name('batch_normalization')))
    y = tf.reduce_mean(y, [1, 2])
    return layers.dense(y, nclass, name('dense'))


def shake(x, nclass, bn, scales, filters, repeat):
    """The shake-shake ResNet of the MixMatch code (26 layers at repeat=4): two branches per block
    mixed by a random per-example weight in training, averaged in inference."""
    training = bn.keywords['training']

    def residual(x0, channels, stride, name):
        def branch():
            y = tf.nn.relu(x0)
            y = layers.conv2d(y, channels, 3, name('conv2d'), stride=stride, use_bias=False)
            y = tf.nn.relu(bn(y, name=name('batch_normalization')))
            y = layers.conv2d(y, channels, 3, name('conv2d'), use_bias=False)
            return bn(y, name=name('batch_normalization'))
        y = layers.shake_shake(branch(), branch(), training)
        if stride == 2:  # two offset 1x1 convolutions, concatenated, as the reference
            halves = [layers.conv2d(tf.nn.relu(x0[:, i::2, i::2]), channels >> 1, 1, name('conv2d'),
                                    use_bias=False) for i in (0, 1)]
            x0 = bn(tf.concat(halves, axis=3), name=name('batch_normalization'))
        elif int(x0.shape[-1]) != channels:
            x0 = bn(layers.conv2d(x0, channels, 1, name('conv2d'), use_bias=False),
                    name=name('batch_normalization'))
        return x0 + y

    y = layers.conv2d(x, 16, 3, 'conv2d', use_bias=False)
    for scale, i in itertools.product(range(scales), range(repeat)):
        with tf.variable_scope('layer%d.%d' % (scale + 1, i)):
            stride = 2 if scale and i == 0 else 1
            y = residual(y, filters << scale, stride, layers.LayerNamer())
    y = tf.reduce_mean(y, [1, 2])
    return layers.dense(y, nclass, 'dense')


def convnet(x, nclass, bn, scales, filters, repeat):
    """The reference's ConvNet: no batch norm, two convolutions per scale, a convolution to the
    classes and global average pooling (tf.layers defaults: Glorot-uniform, leaky ReLU 0.2)."""
    del bn, repeat
    name = layers.LayerNamer()

    def conv(y, channels, activate=True):
        y = layers.conv2d(y, channels, 3, name('conv2d'), initializer=tf.glorot_uniform_initializer())
        return layers.leaky_relu(y, alpha=0.2) if activate else y

    y = conv(x, filters)
    for scale in range(scales):
        y = conv(y, filters << scale)
        y = conv(y, filters << (scale + 1))
        y = tf.nn.avg_pool(y, [1, 2, 2, 1], [1, 2, 2, 1], 'VALID')
    return tf.reduce_mean(conv(y, nclass, activate=False), [1, 2])


def smallconv(x, nclass, bn, scales, filters, repeat):
    """Small plain conv net (conv-BN-leaky ReLU, average pooling per scale) for fast runs and tests."""
    del repeat
    name = layers.LayerNamer()
    y = x
    for scale in range(scales):
        y = layers.conv2d(y, filters << scale, 3, name('conv2d'))
        y = layers.leaky_relu(bn(y, name=name('batch_normalization')))
        y = tf.nn.avg_pool(y, [1, 2, 2, 1], [1, 2, 2, 1], 'SAME')
    y = tf.reduce_mean(y, [1, 2])
    return layers.dense(y, nclass, name('dense'))


NETWORKS = dict(resnet=resnet, shake=shake, convnet=convnet, smallconv=smallconv)
# The reference whitens the input of these (--whiten); its ConvNet takes raw pixels.
WHITENED = ('resnet', 'shake', 'smallconv')


def make_classifier(arch, nclass, scales, filters, repeat, bn_momentum=0.999, whiten=None):
    """Return classify(x, training, update_stats=True, getter=None) -> logits, sharing variables.

    `whiten` = (mean, std) per channel: inputs become (x - mean) / std first (--whiten).
    """
    if arch not in ARCHS:
        raise UserError('unknown --arch=%s; choose one of: %s' % (arch, ', '.join(ARCHS)))
    network = NETWORKS[arch]

    def classify(x, training, update_stats=True, getter=None):
        bn = functools.partial(layers.batch_norm, training=training, momentum=bn_momentum,
                               update_stats=update_stats and training)
        if whiten is not None and arch in WHITENED:
            x = (x - tf.constant(whiten[0], tf.float32)) / tf.constant(whiten[1], tf.float32)
        with tf.variable_scope('classify', reuse=tf.AUTO_REUSE, custom_getter=getter):
            return network(x, nclass, bn, scales, filters, repeat)
    return classify


def with_teacher(classify, teacher_getter):
    """classify(x, training, update_stats=True, getter=None, teacher=False): with teacher=True it
    reads the weights' moving averages (the EMA teacher of mean teacher and ICT)."""
    def student_or_teacher(x, training, update_stats=True, getter=None, teacher=False):
        return classify(x, training, update_stats, teacher_getter if teacher else getter)
    return student_or_teacher


def classifier_from_hp(hp):
    """The classifier a run's hyperparameters (args.json) describe."""
    return make_classifier(hp['arch'], int(hp['nclass']), hp['scales'], hp['filters'], hp['repeat'],
                           hp.get('bn_momentum', 0.999), hp.get('whiten_stats'))


def auto_scales(width):
    """Number of resolution stages when --scales=0: ceil(log2(width)) - 2 as the reference (3 at
    32 px, 5 at 96 px), at least 1."""
    return max(1, ilog2(width) - 2)
