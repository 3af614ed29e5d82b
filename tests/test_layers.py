"""Batch norm modes and moving averages, against numpy."""

import numpy as np
import tensorflow.compat.v1 as tf

from libml import layers

tf.disable_v2_behavior()


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
