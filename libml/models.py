"""Classifier networks: the MixMatch wide ResNet and a small plain conv net for quick runs."""

import functools

import tensorflow.compat.v1 as tf

from libml import layers
from libml.utils import UserError, ilog2

ARCHS = ('resnet', 'convnet')


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


def convnet(x, nclass, bn, scales, filters, repeat):
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


def make_classifier(arch, nclass, scales, filters, repeat, bn_momentum=0.999):
    """Return classify(x, training, update_stats=True, getter=None) -> logits, sharing variables."""
    if arch not in ARCHS:
        raise UserError('unknown --arch=%s; choose one of: %s' % (arch, ', '.join(ARCHS)))
    network = resnet if arch == 'resnet' else convnet

    def classify(x, training, update_stats=True, getter=None):
        bn = functools.partial(layers.batch_norm, training=training, momentum=bn_momentum,
                               update_stats=update_stats and training)
        with tf.variable_scope('classify', reuse=tf.AUTO_REUSE, custom_getter=getter):
            return network(x, nclass, bn, scales, filters, repeat)
    return classify


def auto_scales(width):
    """Number of resolution stages when --scales=0: log2(width) - 2 (3 at 32 px), at least 1."""
    return max(1, ilog2(width) - 2)
