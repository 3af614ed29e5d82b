"""Fake `npu_bridge.estimator.npu.npu_loss_scale_optimizer.NPULossScaleOptimizer` (r1.7.0).

Real behaviour (docs/npu_bridge_api.md section 2): `compute_gradients` multiplies the loss by the manager's scale,
runs the inner optimizer's `compute_gradients` and multiplies the gradients by 1/scale.
`apply_gradients` reads the device's float-status overflow flags (NpuAllocFloatStatus ->
NpuGetFloatStatus after all gradients -> NpuClearFloatStatus; with `is_distributed=True` the status
is summed over the ranks with `hccl_ops.allreduce([status], "sum", fusion=0)`), then runs
`tf.cond(finite, inner apply_gradients, no_op)` grouped with
`loss_scale_manager.update_loss_scale(finite)`: on an overflowing step the inner update, and the
`global_step` increment it would do, are skipped. A FixedLossScaleManager with
`enable_overflow_check=False` skips the check (finite is True).

Overflow emulation (the float-status registers do not exist on a CPU): a step overflows when any
gradient, multiplied back by the loss scale, is not finite or is beyond the float16 maximum
(|g * scale| > 65504), i.e. when the scaled gradient could not be held in float16, as under
precision_mode=allow_mix_precision on an Ascend 910. Overflows in forward activations are not
emulated, and the fake applies the rule whatever the session's precision_mode.

As in r1.7.0 the class derives from `tf.train.Optimizer` without running its `__init__`, so
`get_slot`, `get_slot_names` and `variables()` raise AttributeError (r1.2.0-r1.6.0 answer
None/[] for the wrapper itself, r1.8.0+ forward to the inner optimizer): code that needs Adam's
slots must ask the inner optimizer. Private attributes are the real ones (`_opt`,
`_loss_scale_manager`, `_is_distributed`); tests read `npu_bridge.fake_checks` instead.
"""
import tensorflow.compat.v1 as tf

import fake_npu_state
from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
from npu_bridge.hccl import hccl_ops

FLOAT16_MAX = 65504.0


class NPULossScaleOptimizer(tf.train.Optimizer):
    """Loss scaling around `opt`, driven by `loss_scale_manager`; skips overflowing updates."""

    # pylint: disable=super-init-not-called
    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        fake_npu_state.record('NPULossScaleOptimizer', self, opt=opt,
                              loss_scale_manager=loss_scale_manager,
                              is_distributed=is_distributed)
        if not isinstance(opt, tf.train.Optimizer):  # stricter: the real one fails later
            raise TypeError('opt must be a tf.train.Optimizer, got %r' % (opt,))
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager
        self._is_distributed = is_distributed

    def compute_gradients(self, loss, var_list=None, gate_gradients=tf.train.Optimizer.GATE_OP,
                          aggregation_method=None, colocate_gradients_with_ops=False,
                          grad_loss=None):
        fake_npu_state.record('NPULossScaleOptimizer.compute_gradients', self, loss=loss,
                              var_list=var_list)
        loss_scale = self._loss_scale_manager.get_loss_scale()
        if callable(loss):
            loss = loss()
        scaled_loss = loss * tf.cast(loss_scale, loss.dtype.base_dtype)
        grads_and_vars = self._opt.compute_gradients(
            scaled_loss, var_list=var_list, gate_gradients=gate_gradients,
            aggregation_method=aggregation_method,
            colocate_gradients_with_ops=colocate_gradients_with_ops, grad_loss=grad_loss)
        inverse = tf.reciprocal(loss_scale)
        return [(None if g is None else g * tf.cast(inverse, g.dtype.base_dtype), v)
                for g, v in grads_and_vars]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        fake_npu_state.record('NPULossScaleOptimizer.apply_gradients', self,
                              global_step=global_step, name=name)
        manager = self._loss_scale_manager
        if isinstance(manager, FixedLossScaleManager) and \
                not manager.get_enable_overflow_check():
            finite = tf.constant(True)
        else:
            status = self._overflow_status([g for g, _ in grads_and_vars if g is not None])
            if self._is_distributed:
                status = hccl_ops.allreduce([status], 'sum', fusion=0)
            finite = tf.equal(tf.reduce_sum(status), 0.0)  # status equals the cleared status

        def apply_fn():
            return self._opt.apply_gradients(grads_and_vars, global_step, name)

        update_vars = tf.cond(finite, apply_fn, tf.no_op)
        return tf.group(update_vars, manager.update_loss_scale(finite))

    def _overflow_status(self, grads):
        """float32 count of gradients that overflow float16 once scaled (0: the step is clean)."""
        scale = tf.cast(self._loss_scale_manager.get_loss_scale(), tf.float32)
        flags = []
        for grad in grads:
            values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
            values = tf.cast(values, tf.float32)
            bad = tf.logical_or(tf.logical_not(tf.is_finite(values)),
                                tf.abs(values * scale) > FLOAT16_MAX)
            flags.append(tf.cast(tf.reduce_any(bad), tf.float32))
        return tf.add_n(flags) if flags else tf.constant(0.0)
