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
    # ceil(log2 width) - 2, as the reference: 40 px gets 4 stages, 28 px gets 3.
    assert models.auto_scales(40) == 4 and models.auto_scales(28) == 3
    with pytest.raises(UserError, match='unknown --arch=vgg'):
        models.make_classifier('vgg', 10, 1, 8, 1)


def _build(arch, **kwargs):
    graph = tf.Graph()
    with graph.as_default():
        tf.set_random_seed(1)
        classify = models.make_classifier(arch, 10, scales=3, filters=16, repeat=2, **kwargs)
        images = tf.constant(np.random.RandomState(2).uniform(-1, 1, (4, 32, 32, 3)), tf.float32)
        train_logits = classify(images, training=True)
        eval_logits = classify(images, training=False)
        names = sorted(v.op.name for v in tf.global_variables())
    return graph, train_logits, eval_logits, names


def _run(graph, tensors):
    with tf.Session(graph=graph) as session:
        session.run(tf.variables_initializer(graph.get_collection('variables')))
        return session.run(tensors)


def test_shake_shake_mixes_branches_randomly_in_training_and_averages_in_inference():
    graph, train_logits, eval_logits, names = _build('shake')
    with tf.Session(graph=graph) as session:
        session.run(tf.variables_initializer(graph.get_collection('variables')))
        first, second = session.run(train_logits), session.run(train_logits)
        eval_first, eval_second = session.run(eval_logits), session.run(eval_logits)
    assert first.shape == (4, 10) and not np.allclose(first, second)  # a new shake weight per run
    np.testing.assert_array_equal(eval_first, eval_second)
    # Two branches per block, bias-free convolutions, per-block scopes as the MixMatch code.
    assert 'classify/layer1.0/conv2d/kernel' in names and 'classify/layer1.0/conv2d_1/kernel' in names
    assert not [n for n in names if n.endswith('conv2d/bias')]
    assert 'classify/layer2.0/batch_normalization_4/gamma' in names  # downsampling shortcut has BN


def test_reference_convnet_has_no_batch_norm_and_classifies_with_a_convolution():
    graph, train_logits, eval_logits, names = _build('convnet')
    train, evaluate = _run(graph, [train_logits, eval_logits])
    np.testing.assert_allclose(train, evaluate, rtol=1e-6)  # no batch norm: modes agree
    assert not [n for n in names if 'batch_normalization' in n]
    # 1 stem + 2 per scale + 1 to the classes, tf.layers names, channels 16 -> 32 -> 64 -> 128 -> 10
    kernels = [n for n in names if n.endswith('/kernel')]
    assert len(kernels) == 8 and 'classify/conv2d_7/kernel' in kernels
    with graph.as_default():
        shapes = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    assert shapes['classify/conv2d_6/kernel'] == [3, 3, 64, 128]
    assert shapes['classify/conv2d_7/kernel'] == [3, 3, 128, 10]


def test_whiten_normalises_the_input_per_channel():
    mean, std = [0.5, -0.5, 0.], [2., 1., 0.5]
    with tf.Graph().as_default():
        seen = []
        models.NETWORKS['probe'] = lambda x, *args: seen.append(x) or tf.reduce_mean(x, [1, 2])
        models.WHITENED += ('probe',)
        try:
            models.ARCHS += ('probe',)
            classify = models.make_classifier('probe', 3, 1, 1, 1, whiten=(mean, std))
            x = np.random.RandomState(0).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
            classify(tf.constant(x), training=False)
            with tf.Session() as session:
                whitened = session.run(seen[0])
        finally:
            del models.NETWORKS['probe']
            models.WHITENED = models.WHITENED[:-1]
            models.ARCHS = tuple(a for a in models.ARCHS if a != 'probe')
    np.testing.assert_allclose(whitened, (x - mean) / std, rtol=1e-6)


def test_channel_mean_std_of_the_training_images(tmp_path):
    import tiny_data
    from libml import data, records
    root = str(tmp_path)
    dataset = data.resolve(tiny_data.make_ssl_dataset(root, colors=3) + '-6', root=root)
    mean, std = data.channel_mean_std(dataset)
    labeled, _ = records.load_arrays(dataset.label_file)
    unlabeled, _ = records.load_arrays(dataset.unlabel_file)
    pixels = data.to_float(np.concatenate([labeled, unlabeled[6:]])).reshape(-1, 3)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-5)
