"""Fake `npu_bridge.estimator.npu.npu_optimizer` data-parallel pieces (r1.7.0 signatures).

- `NPUDistributedOptimizer(optimizer, is_weight_update_sharding=False, name=None)`: a
  `tf.train.Optimizer` (default name 'Distributed' + the inner class name).
  `compute_gradients(*args, **kwargs)` runs the inner one, then, when env RANK_SIZE > 1,
  averages every gradient with `allreduce(grad, True)`; RANK_SIZE unset or <= 1 leaves them
  unchanged. `apply_gradients` and `get_slot`/`get_slot_names`/`variables` go to the inner one.
  (r1.1.1 had `(optimizer, name=None)`.) The weight-update-sharding path is not emulated
  (NotImplementedError), nor the IndexedSlices path (two allgathers in the real one).
- `allreduce(tensor, average=True)`: the module helper. The real one gets the rank size from
  `npu_common.NPUBasics("").size()`, whose job info needs env JOB_ID set (no job json): without
  it the job info is None and `.size()` fails; the fake raises AttributeError there too.
- `npu_allreduce(values, reduction="mean", fusion=1, fusion_id=-1, group="hccl_world_group")`
  (r1.6+): allreduce of a tensor or a list; mean = sum / RANK_SIZE.

All go through the fake `hccl_ops.allreduce` (every rank holds the same tensor: see there).
"""
import os

import tensorflow.compat.v1 as tf

import fake_npu_state
from npu_bridge.hccl import hccl_ops


def _job_rank_size():
    """npu_common.NPUBasics("").size(): needs JOB_ID when there is no job json."""
    if not os.environ.get('JOB_ID'):
        raise AttributeError("'NoneType' object has no attribute 'rank_size' (fake npu_common: "
                             "env JOB_ID is unset, so there is no job info)")
    return fake_npu_state.rank_size()


def allreduce(tensor, average=True):
    """Sum `tensor` over the ranks (hccl allreduce), divided by the rank size when `average`."""
    fake_npu_state.record('npu_optimizer.allreduce', tensor=tensor, average=average)
    size = _job_rank_size()
    if isinstance(tensor, tf.IndexedSlices):
        raise NotImplementedError('fake npu_bridge: IndexedSlices allreduce (two allgathers) '
                                  'is not emulated')
    summed = hccl_ops.allreduce(tensor, 'sum')
    if average:
        return summed / tf.cast(size, summed.dtype)
    return summed


def npu_allreduce(values, reduction='mean', fusion=1, fusion_id=-1, group='hccl_world_group'):
    """Allreduce a tensor or a list of tensors; 'mean' is the sum divided by RANK_SIZE."""
    fake_npu_state.record('npu_allreduce', values=values, reduction=reduction, fusion=fusion,
                          fusion_id=fusion_id, group=group)
    one = not isinstance(values, (list, tuple))
    reduced = []
    for value in ([values] if one else values):
        if reduction == 'mean':
            total = hccl_ops.allreduce(value, 'sum', fusion, fusion_id, group)
            reduced.append(total / tf.cast(fake_npu_state.rank_size(), total.dtype))
        else:
            reduced.append(hccl_ops.allreduce(value, reduction, fusion, fusion_id, group))
    return reduced[0] if one else reduced


class NPUDistributedOptimizer(tf.train.Optimizer):
    """Averages gradients over RANK_SIZE ranks before the inner optimizer applies them."""

    def __init__(self, optimizer, is_weight_update_sharding=False, name=None):
        fake_npu_state.record('NPUDistributedOptimizer', self, optimizer=optimizer,
                              is_weight_update_sharding=is_weight_update_sharding, name=name)
        if is_weight_update_sharding:
            raise NotImplementedError('fake npu_bridge: weight-update sharding is not emulated')
        if name is None:
            name = 'Distributed' + type(optimizer).__name__
        super(NPUDistributedOptimizer, self).__init__(use_locking=False, name=name)
        self._optimizer = optimizer
        self._is_weight_update_sharding = is_weight_update_sharding

    def compute_gradients(self, *args, **kwargs):
        grads_and_vars = self._optimizer.compute_gradients(*args, **kwargs)
        rank_size = os.environ.get('RANK_SIZE')
        if rank_size is None or int(rank_size) <= 1:
            return grads_and_vars
        return [(None if g is None else allreduce(g, True), v) for g, v in grads_and_vars]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)
