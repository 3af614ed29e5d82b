"""Fake `npu_bridge.estimator.npu.npu_loss_scale_manager` (r1.7.0; `interface_spec/
api_npu_loss_scale_manager.pyh`).

Same arithmetic and state as the real managers (which from r1.7.0 subclass
`tf.contrib.mixed_precision`'s; contrib is gone from TF 2.x, so the fake re-implements them):

- `FixedLossScaleManager(loss_scale, enable_overflow_check=True)`: ValueError("loss scale must be
  at least 1.") below 1; the scale is a float32 constant; `update_loss_scale` is a no-op.
  (r1.1.1-r1.3.0 took `loss_scale` only.)
- `ExponentialUpdateLossScaleManager(init_loss_scale, incr_every_n_steps,
  decr_every_n_nan_or_inf=2, incr_ratio=2, decr_ratio=0.8)`: three non-trainable global
  variables in the current scope, `loss_scale` (float32), `good_steps` and `bad_steps` (int32);
  `get_loss_scale()` is the variable. Finite step: good + 1; when that reaches
  incr_every_n_steps the scale is multiplied by incr_ratio (unless that leaves the float32
  range) and both counters reset. Overflow: bad + 1 and good = 0; when bad + 1 reaches
  decr_every_n_nan_or_inf the scale becomes max(1, scale * decr_ratio) and both counters reset.
  Bad steps accumulate; they need not be consecutive.

Constructor arguments are recorded (`npu_bridge.fake_checks.calls`), not kept in attributes.
"""
import tensorflow.compat.v1 as tf

import fake_npu_state


class FixedLossScaleManager(object):
    """A constant loss scale."""

    def __init__(self, loss_scale, enable_overflow_check=True):
        fake_npu_state.record('FixedLossScaleManager', self, loss_scale=loss_scale,
                              enable_overflow_check=enable_overflow_check)
        if loss_scale < 1:
            raise ValueError('loss scale must be at least 1.')
        self._loss_scale = tf.convert_to_tensor(loss_scale, dtype=tf.float32)
        self._enable_overflow_check = enable_overflow_check

    def get_enable_overflow_check(self):
        return self._enable_overflow_check

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        del finite_grads
        return tf.no_op()


class ExponentialUpdateLossScaleManager(object):
    """Grow the scale after `incr_every_n_steps` finite steps in a row, shrink it after
    `decr_every_n_nan_or_inf` overflowing steps."""

    def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2,
                 incr_ratio=2, decr_ratio=0.8):
        fake_npu_state.record('ExponentialUpdateLossScaleManager', self,
                              init_loss_scale=init_loss_scale,
                              incr_every_n_steps=incr_every_n_steps,
                              decr_every_n_nan_or_inf=decr_every_n_nan_or_inf,
                              incr_ratio=incr_ratio, decr_ratio=decr_ratio)
        self._incr_every_n_steps = incr_every_n_steps
        self._decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
        self._incr_ratio = incr_ratio
        self._decr_ratio = decr_ratio
        self._loss_scale = tf.Variable(tf.convert_to_tensor(init_loss_scale, tf.float32),
                                       name='loss_scale', dtype=tf.float32, trainable=False)
        self._num_good_steps = tf.Variable(0, name='good_steps', dtype=tf.int32,
                                           trainable=False)
        self._num_bad_steps = tf.Variable(0, name='bad_steps', dtype=tf.int32, trainable=False)

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        """The op that moves the scale and counters after a step with `finite_grads`.

        Branch-free form of the real nested tf.cond: each variable is read once, so every
        assignment sees the values from before this update.
        """
        scale = self._loss_scale.read_value()
        good = self._num_good_steps.read_value() + 1
        bad = self._num_bad_steps.read_value() + 1
        grow = tf.logical_and(finite_grads, good >= self._incr_every_n_steps)
        shrink = tf.logical_and(tf.logical_not(finite_grads),
                                bad >= self._decr_every_n_nan_or_inf)
        grown = scale * self._incr_ratio
        grown = tf.where(tf.is_finite(grown), grown, scale)
        shrunk = tf.maximum(1.0, scale * self._decr_ratio)
        new_scale = tf.where(grow, grown, tf.where(shrink, shrunk, scale))
        reset = tf.logical_or(grow, shrink)
        new_good = tf.where(tf.logical_and(finite_grads, tf.logical_not(reset)), good,
                            tf.zeros_like(good))
        new_bad = tf.where(tf.logical_or(finite_grads, reset),
                           tf.where(reset, tf.zeros_like(bad), bad - 1), bad)
        return tf.group(tf.assign(self._loss_scale, new_scale),
                        tf.assign(self._num_good_steps, new_good),
                        tf.assign(self._num_bad_steps, new_bad))
