"""Fake `NPULossScaleOptimizer`: a real optimizer that scales the loss, unscales the
gradients and records its calls; the real one also checks the NPU's overflow flags."""
import tensorflow.compat.v1 as tf

CREATED = []  # every optimizer made, for tests to inspect


class NPULossScaleOptimizer(tf.train.Optimizer):
    """Loss scaling around `opt`, driven by `loss_scale_manager`."""

    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        super(NPULossScaleOptimizer, self).__init__(use_locking=False,
                                                    name='NPULossScaleOptimizer')
        self.inner = opt
        self.loss_scale_manager = loss_scale_manager
        self.is_distributed = is_distributed
        self.calls = []
        CREATED.append(self)

    def compute_gradients(self, loss, var_list=None, **kwargs):
        self.calls.append('compute_gradients')
        with tf.name_scope(self._name):
            scale = self.loss_scale_manager.get_loss_scale()
            pairs = self.inner.compute_gradients(loss * scale, var_list=var_list, **kwargs)
            return [(None if g is None else g / scale, v) for g, v in pairs]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        self.calls.append('apply_gradients')
        grads_and_vars = list(grads_and_vars)
        with tf.name_scope(self._name):
            finite = tf.reduce_all([tf.reduce_all(tf.is_finite(g))
                                    for g, _ in grads_and_vars if g is not None])
            update_scale = self.loss_scale_manager.update_loss_scale(finite)
        update_vars = self.inner.apply_gradients(grads_and_vars, global_step, name)
        return tf.group(update_vars, update_scale)

    def get_slot(self, var, name):
        return self.inner.get_slot(var, name)

    def get_slot_names(self):
        return self.inner.get_slot_names()

    def variables(self):
        return self.inner.variables()
