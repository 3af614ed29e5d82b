"""Fake `npu_bridge.hccl.hccl_ops` (r1.7.0 signatures; `interface_spec/api_hccl_ops.pyh`).

There is one process here, so the collectives emulate a cluster of RANK_SIZE ranks (unset: 1)
that all hold the same tensor: allreduce 'sum' gives x * RANK_SIZE, 'max'/'min' give x, 'prod'
gives x ** RANK_SIZE; broadcast returns its inputs; allgather stacks RANK_SIZE copies. Argument
and dtype checks are those of the real ops (HcomAllReduce has no int64/float64 through r1.8.0;
master adds int64 and bfloat16), plus HCCL's documented rule that an allreduce input may not
come straight from a variable. Stricter than the adapter (whose HcomBroadcast takes a list of any
types): a fused broadcast (fusion != 0) of tensors of more than one dtype is refused, since one
fused HCCL buffer holds one type and Huawei's own code (NPUBroadcastGlobalVariablesHook,
r1.3.0+) broadcasts the trainable (float) variables only. Every call is recorded
(`npu_bridge.fake_checks.calls`). With env FAKE_NPU_HCCL_DIR the worker processes of a simulated
job exchange allreduce and broadcast values for real (tests/fake_npu/fake_npu_exchange.py).
"""
import numpy as np
import tensorflow.compat.v1 as tf

import fake_npu_exchange
import fake_npu_state

WORLD = 'hccl_world_group'
ALLREDUCE_TYPES = (tf.int8, tf.int16, tf.int32, tf.float16, tf.float32)
ALLGATHER_TYPES = ALLREDUCE_TYPES + (tf.int64, tf.uint64)
REDUCTIONS = ('min', 'max', 'prod', 'sum')
VARIABLE_OPS = ('VariableV2', 'Variable', 'VarHandleOp')


def _check_group(group):
    if not isinstance(group, str):
        raise TypeError('group must be a str, got %r' % (group,))


def _check_dtype(op, tensor, allowed):
    if tensor.dtype.base_dtype not in allowed:
        raise TypeError('%s: dtype %s is not supported (allowed: %s)' % (
            op, tensor.dtype.base_dtype.name, ', '.join(t.name for t in allowed)))


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group=WORLD):
    """HcomAllReduce of one tensor over the group."""
    fake_npu_state.record('allreduce', tensor=tensor, reduction=reduction, fusion=fusion,
                          fusion_id=fusion_id, group=group)
    if isinstance(tensor, tf.Variable) or getattr(getattr(tensor, 'op', None), 'type',
                                                   None) in VARIABLE_OPS:
        raise ValueError('allreduce: the input may not come straight from a variable; read it '
                         'first (HCCL rule)')
    tensor = tf.convert_to_tensor(tensor)
    _check_dtype('HcomAllReduce', tensor, ALLREDUCE_TYPES)
    if reduction not in REDUCTIONS:
        raise ValueError('allreduce: reduction %r not in %s' % (reduction, REDUCTIONS))
    if fusion not in (0, 1, 2):
        raise ValueError('allreduce: fusion must be 0, 1 or 2, got %r' % (fusion,))
    _check_group(group)
    size = fake_npu_state.rank_size()
    with tf.name_scope('HcomAllReduce'):
        if fake_npu_exchange.folder():
            combine = {'sum': np.sum, 'prod': np.prod, 'max': np.max, 'min': np.min}[reduction]
            return fake_npu_exchange.collective(tensor, size, lambda v: combine(v, axis=0))
        if reduction == 'sum':
            return tensor * tf.cast(size, tensor.dtype)
        if reduction == 'prod':
            return tf.pow(tensor, tf.cast(size, tensor.dtype))
        return tf.identity(tensor)


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group=WORLD):
    """HcomBroadcast: `tensor` is a list of tensors (any types); returns a list."""
    fake_npu_state.record('broadcast', tensor=tensor, root_rank=root_rank, fusion=fusion,
                          fusion_id=fusion_id, group=group)
    if not isinstance(tensor, (list, tuple)):
        raise TypeError('broadcast: the input is a list of tensors, got %r' % (tensor,))
    if isinstance(root_rank, bool) or not isinstance(root_rank, int) or \
            not 0 <= root_rank < fake_npu_state.rank_size():
        raise ValueError('broadcast: root_rank must be an int in [0, RANK_SIZE=%d), got %r'
                         % (fake_npu_state.rank_size(), root_rank))
    _check_group(group)
    dtypes = sorted(set(tf.convert_to_tensor(t).dtype.base_dtype.name for t in tensor))
    if fusion != 0 and len(dtypes) > 1:
        raise TypeError('broadcast: one fused call (fusion=%r) of several types (%s); broadcast '
                        'each type on its own, or with fusion=0' % (fusion, ', '.join(dtypes)))
    with tf.name_scope('HcomBroadcast'):
        if fake_npu_exchange.folder():
            size = fake_npu_state.rank_size()
            return [fake_npu_exchange.collective(tf.convert_to_tensor(t), size,
                                                 lambda v: v[root_rank]) for t in tensor]
        return [tf.identity(t) for t in tensor]


def allgather(tensor, rank_size, group=WORLD):
    """HcomAllGather: `rank_size` copies concatenated along the first axis."""
    fake_npu_state.record('allgather', tensor=tensor, rank_size=rank_size, group=group)
    tensor = tf.convert_to_tensor(tensor)
    _check_dtype('HcomAllGather', tensor, ALLGATHER_TYPES)
    _check_group(group)
    with tf.name_scope('HcomAllGather'):
        return tf.concat([tensor] * rank_size, 0)
