"""Batch norm modes and moving averages, against numpy; the activation's compiled gradient."""

import contextlib

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from libml import layers

tf.disable_v2_behavior()

# The compiled gradient serves the oneDNN bfloat16 rewrite, which TF 1.15 lacks (Device.scope
# never takes it there); TF 1.15's XLA also clusters the unmarked neighbours of a marked op.
compiled_gradient_runtime = pytest.mark.skipif(
    tf.VERSION.startswith('1.'), reason='the XLA-compiled activation gradient is for TF 2.x '
    '(oneDNN bfloat16); this is TensorFlow %s' % tf.VERSION)


def test_batch_norm_training_uses_batch_moments_and_updates_moving_averages_on_request():
    x = np.random.RandomState(0).randn(4, 3, 3, 2).astype(np.float32) * 3 + 5
    with tf.Graph().as_default():
        trained = layers.batch_norm(tf.constant(x), training=True, name='bn', momentum=0.9)
        with tf.variable_scope('', reuse=True):
            frozen = layers.batch_norm(tf.constant(x), training=False, name='bn')
            no_update = layers.batch_norm(tf.constant(x), training=True, name='bn', update_stats=False)
        entries = tf.get_collection(layers.BN_UPDATES)
        assert len(entries) == 2  # only the first training call registers updates
        updates = [layers.moving_average_update(*entry) for entry in entries]
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            y, y_frozen, y_same = session.run([trained, frozen, no_update])
            session.run(updates)
            moving_mean = session.run(tf.global_variables('bn/moving_mean')[0])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), atol=1e-4)
    np.testing.assert_allclose(y_same, y, atol=1e-6)
    np.testing.assert_allclose(y_frozen, x / np.sqrt(1 + 1e-3), atol=1e-4)  # mean 0, variance 1
    np.testing.assert_allclose(moving_mean, 0.1 * mean, rtol=1e-5)
    assert len(tf.get_collection(layers.BN_MOMENTS, scope=None)) == 0  # collections are per graph


def _leaky_relu_gradients(dtype, x, g, alpha, fast):
    """(tf.nn.leaky_relu's value, its gradient) of x for the upstream gradient g, in `dtype`,
    and the kernels that ran (a traced run)."""
    with tf.Graph().as_default():
        # Fed, not constants: constant folding would compute it all before any kernel runs.
        x_in, g_in = tf.placeholder(tf.float32, x.shape), tf.placeholder(tf.float32, g.shape)
        xt, gt = tf.cast(x_in, dtype), tf.cast(g_in, dtype)
        with layers.bfloat16_gradients() if fast else contextlib.nullcontext():
            y = layers.leaky_relu(xt, alpha)
        grad = tf.gradients(y, xt, grad_ys=gt)[0]
        metadata = tf.RunMetadata()
        with tf.Session() as session:
            values = session.run([tf.cast(y, tf.float32), tf.cast(grad, tf.float32)],
                                 feed_dict={x_in: x, g_in: g},
                                 options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
                                 run_metadata=metadata)
    kernels = set(node.timeline_label.split('(')[0].split(' = ')[-1].strip()
                  for device in metadata.step_stats.dev_stats for node in device.node_stats)
    return values, kernels


# Both signs, zeros of both signs, tiny and huge magnitudes, for a slope with an inexact product.
EDGES = np.array([0., -0., 1e-30, -1e-30, 3.5, -3.5, 1e30, -1e30, 0.7, -0.7], np.float32)


@compiled_gradient_runtime
@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16])
@pytest.mark.parametrize('alpha', [0.1, 0.2])
def test_compiled_leaky_relu_gradient_equals_leaky_relu_grad_bit_for_bit(dtype, alpha):
    rng = np.random.RandomState(1)
    x = np.concatenate([EDGES, rng.randn(500).astype(np.float32)])
    g = np.concatenate([EDGES[::-1], rng.randn(500).astype(np.float32) * 10])
    (y, grad_tf), slow_kernels = _leaky_relu_gradients(dtype, x, g, alpha, fast=False)
    (y_fast, grad_fast), fast_kernels = _leaky_relu_gradients(dtype, x, g, alpha, fast=True)
    assert 'LeakyReluGrad' in slow_kernels and '_XlaRun' not in slow_kernels
    # XLA ran the gradient: TensorFlow's own LeakyReluGrad kernel did not; the forward did.
    assert '_XlaRun' in fast_kernels and 'LeakyReluGrad' not in fast_kernels, fast_kernels
    assert 'LeakyRelu' in fast_kernels
    np.testing.assert_array_equal(y_fast, y)
    np.testing.assert_array_equal(grad_fast, grad_tf)
    assert np.array_equal(np.signbit(grad_fast), np.signbit(grad_tf))  # zeros' signs too
    factor = np.where(x > 0, 1., alpha)
    tolerance = 1e-6 if dtype == tf.float32 else 1e-2
    np.testing.assert_allclose(grad_fast, g * factor, rtol=tolerance)


def _compiled(op):
    try:
        return op.get_attr('_XlaCompile')
    except ValueError:
        return False


def test_only_the_cpu_bfloat16_device_compiles_the_activation_gradient():
    from libml import npu_config
    for name, precision, fast in (('cpu', 'mixed', True), ('cpu', 'fp32', False),
                                  ('gpu', 'mixed', False), ('npu', 'mixed', False)):
        device = npu_config.Device(name, precision, precision)
        with tf.Graph().as_default() as graph:
            x = tf.constant([[-1., 2.]])
            with device.scope():
                y = layers.leaky_relu(x)
            tf.gradients(y, x)
            gradients = [op for op in graph.get_operations() if op.type == 'LeakyReluGrad']
        assert len(gradients) == 1
        assert _compiled(gradients[0]) == fast, (name, precision)
        assert not _compiled(y.op)  # the forward keeps TensorFlow's kernel everywhere


@compiled_gradient_runtime
def test_compiled_activation_gradient_keeps_a_wide_resnet_steps_gradients_bit_for_bit():
    from libml import models
    images = np.random.RandomState(2).rand(4, 8, 8, 3).astype(np.float32)
    grads = []
    for fast in (False, True):
        with tf.Graph().as_default():
            tf.set_random_seed(1)
            classify = models.make_classifier('resnet', 3, scales=2, filters=4, repeat=1)
            with layers.bfloat16_gradients() if fast else contextlib.nullcontext():
                logits = classify(tf.constant(images), training=True)
            loss = tf.reduce_sum(tf.square(logits))
            variables = tf.trainable_variables()
            with tf.Session() as session:
                session.run(tf.global_variables_initializer())
                grads.append(session.run(tf.gradients(loss, variables)))
    assert len(grads[0]) == len(grads[1]) > 10
    for slow, fast in zip(*grads):
        np.testing.assert_array_equal(fast, slow)
