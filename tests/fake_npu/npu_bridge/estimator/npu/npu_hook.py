"""Fake `npu_bridge.estimator.npu.npu_hook.NPUBroadcastGlobalVariablesHook` (r1.7.0).

A SessionRunHook that, when env RANK_SIZE > 1, broadcasts variables from `root_rank` after the
session is created (`hccl_ops.broadcast([var], root_rank)` + assign). Despite its name it
broadcasts `tf.trainable_variables()` only (r1.3.0+; r1.1.1-r1.2.0 used global variables), so
batch-norm moving statistics, EMA shadows and optimizer slots are NOT made equal across ranks:
they must start equal by construction (same seed / initialiser) or be broadcast separately.
"""
import tensorflow.compat.v1 as tf

import fake_npu_state
from npu_bridge.hccl import hccl_ops


class NPUBroadcastGlobalVariablesHook(tf.train.SessionRunHook):
    """Broadcast the trainable variables from `root_rank` once the session exists."""

    def __init__(self, root_rank=None, index=None):
        fake_npu_state.record('NPUBroadcastGlobalVariablesHook', self, root_rank=root_rank,
                              index=index)
        self._root_rank = root_rank
        self._index = index
        self._bcast_op = None

    def begin(self):
        if fake_npu_state.rank_size() <= 1:
            return
        variables = tf.trainable_variables()
        fake_npu_state.record('NPUBroadcastGlobalVariablesHook.begin', self,
                              variables=[v.op.name for v in variables])
        assigns = []
        for var in variables:
            [value] = hccl_ops.broadcast([var], self._root_rank)
            assigns.append(tf.assign(var, value))
        self._bcast_op = tf.group(*assigns)

    def after_create_session(self, session, coord):
        del coord
        if self._bcast_op is not None:
            session.run(self._bcast_op)
