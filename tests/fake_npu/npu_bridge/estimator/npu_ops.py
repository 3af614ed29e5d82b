"""Fake `npu_bridge.estimator.npu_ops`: NPU system initialisation and shutdown.

The real `initialize_system` returns the `NPUInit` op (RuntimeError under eager execution);
running it in a session (with the same NpuOptimizer session options as the training session)
initialises the device and collective communication, after which the `hccl.manage.api` rank
helpers answer. The fake's op is a Python callback (tf.py_func) that flips that state: build it
in its own graph, as `npu_init.init_resource` does, not in the audited training graph (the graph
audit rejects Python ops anywhere in a graph).
"""
import numpy as np
import tensorflow.compat.v1 as tf

import fake_npu_state


def _system_op(kind, name, initialized):
    if tf.executing_eagerly():
        raise RuntimeError('%s is not supported in eager mode' % kind)

    def flip():
        fake_npu_state.SYSTEM['initialized'] = initialized
        fake_npu_state.record(kind + ' ran')
        return np.bool_(True)

    done = tf.py_func(flip, [], tf.bool, stateful=True, name=(name or kind) + '_fake')
    with tf.control_dependencies([done]):
        return tf.no_op(name=name or kind)


def initialize_system(name=None):
    """The NPUInit op."""
    fake_npu_state.record('initialize_system', name=name)
    return _system_op('NPUInit', name, True)


def shutdown_system(name=None):
    """The NPUShutdown op."""
    fake_npu_state.record('shutdown_system', name=name)
    return _system_op('NPUShutdown', name, False)
