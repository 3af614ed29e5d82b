"""Fake loss-scale managers: record their arguments, keep the scale in a variable."""
import tensorflow.compat.v1 as tf

CREATED = []  # every manager made, for tests to inspect


class FixedLossScaleManager(object):
    """A constant loss scale."""

    def __init__(self, loss_scale, enable_overflow_check=True):
        self.args = dict(loss_scale=loss_scale, enable_overflow_check=enable_overflow_check)
        CREATED.append(self)

    def get_loss_scale(self):
        return tf.constant(float(self.args['loss_scale']), name='loss_scale')

    def update_loss_scale(self, finite_grads):
        del finite_grads
        return tf.no_op(name='update_loss_scale')


class ExponentialUpdateLossScaleManager(object):
    """A loss scale that shrinks by `decr_ratio` after non-finite gradients (simplified:
    no growth, no step counting; the real one is in CANN's TF adapter)."""

    def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2,
                 incr_ratio=2, decr_ratio=0.8):
        self.args = dict(init_loss_scale=init_loss_scale, incr_every_n_steps=incr_every_n_steps,
                         decr_every_n_nan_or_inf=decr_every_n_nan_or_inf,
                         incr_ratio=incr_ratio, decr_ratio=decr_ratio)
        self._loss_scale = tf.Variable(float(init_loss_scale), trainable=False,
                                       name='loss_scale')
        CREATED.append(self)

    def get_loss_scale(self):
        return self._loss_scale.read_value()

    def update_loss_scale(self, finite_grads):
        shrunk = tf.maximum(1.0, self._loss_scale * self.args['decr_ratio'])
        return tf.assign(self._loss_scale, tf.where(finite_grads, self._loss_scale, shrunk)).op
