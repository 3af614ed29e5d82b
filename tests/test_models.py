"""The wide ResNet of MixMatch: size, checkpoint-compatible names, output shape."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from libml import models
from libml.utils import UserError

tf.disable_v2_behavior()


def test_wrn_28_2_has_about_1_47_million_parameters_and_tf_layers_names():
    with tf.Graph().as_default():
        classify = models.make_classifier('resnet', 10, scales=3, filters=32, repeat=4)
        logits = classify(tf.zeros([2, 32, 32, 3]), training=True)
        classify(tf.zeros([2, 32, 32, 3]), training=False)  # reuses the same variables
        params = sum(int(np.prod(v.shape)) for v in tf.trainable_variables())
        names = {v.op.name for v in tf.global_variables()}
    assert logits.shape.as_list() == [2, 10]
    assert 1.45e6 < params < 1.49e6
    assert {'classify/conv2d/kernel', 'classify/conv2d/bias', 'classify/dense/kernel',
            'classify/batch_normalization/moving_mean', 'classify/batch_normalization_24/gamma',
            'classify/conv2d_27/kernel'} <= names
    assert len([n for n in names if n.endswith('/kernel')]) == 28 + 1  # 25 3x3 + 3 1x1 convs + dense


def test_auto_scales_and_unknown_arch():
    assert models.auto_scales(32) == 3 and models.auto_scales(96) == 5 and models.auto_scales(8) == 1
    with pytest.raises(UserError, match='unknown --arch=vgg'):
        models.make_classifier('vgg', 10, 1, 8, 1)
