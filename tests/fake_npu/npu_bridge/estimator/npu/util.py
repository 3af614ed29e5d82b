"""Fake `npu_bridge.estimator.npu.util`: iterations per loop (r1.7.0).

`set_iteration_per_loop(sess, train_op, iterations_per_loop=1)`: `train_op` must be a
tf.Operation (ValueError), `iterations_per_loop` a positive int (TypeError / ValueError). With 1
it returns `train_op` unchanged; otherwise it creates (or reuses) the int64 resource variables
`npu_runconfig/{iterations_per_loop,loop_cond,zero,one}` in LOCAL_VARIABLES, loads them in
`sess`, and returns `tf.group(train_op, name="IterationOp")`. The session's NpuOptimizer option
`iterations_per_loop` must then be the same number (the fake's `fake_checks` refuses > 1 with a
one-shot iterator, which the adapter kills with LOG(FATAL)). On a CPU one `session.run` of the
IterationOp runs the step once, not `iterations_per_loop` times as the device loop does.
"""
import tensorflow.compat.v1 as tf

import fake_npu_state

_NAMES = ('iterations_per_loop', 'loop_cond', 'zero', 'one')


def _check(iterations_per_loop):
    if isinstance(iterations_per_loop, bool) or not isinstance(iterations_per_loop, int):
        raise TypeError('iterations_per_loop must be an int, got %r' % (iterations_per_loop,))
    if iterations_per_loop <= 0:
        raise ValueError('iterations_per_loop must be positive, got %d' % iterations_per_loop)


class IterationPerLoop(object):
    """The loop variables of the device training loop."""

    def __init__(self):
        self._variables = None

    def create_iteration_per_loop_var(self, train_op):
        if not isinstance(train_op, tf.Operation):
            raise ValueError('train_op must be a tf.Operation, got %r' % (train_op,))
        with train_op.graph.as_default():
            with tf.variable_scope('npu_runconfig', reuse=tf.AUTO_REUSE):
                self._variables = [
                    tf.get_variable(name, shape=[], dtype=tf.int64, trainable=False,
                                    initializer=tf.zeros_initializer(), use_resource=True,
                                    collections=[tf.GraphKeys.LOCAL_VARIABLES])
                    for name in _NAMES]
            return tf.group(train_op, name='IterationOp')

    def load_iteration_per_loop_var(self, sess, iterations_per_loop=1):
        _check(iterations_per_loop)
        fake_npu_state.record('load_iteration_per_loop_var', sess=sess,
                              iterations_per_loop=iterations_per_loop)
        count, loop_cond, zero, one = self._variables
        with sess.graph.as_default():
            sess.run([v.initializer for v in self._variables])
            sess.run([tf.assign(count, iterations_per_loop - 1), tf.assign(loop_cond, 0),
                      tf.assign(zero, 0), tf.assign(one, 1)])


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    """`train_op` run `iterations_per_loop` times on the device per session.run."""
    fake_npu_state.record('set_iteration_per_loop', sess=sess, train_op=train_op,
                          iterations_per_loop=iterations_per_loop)
    if not isinstance(train_op, tf.Operation):
        raise ValueError('train_op must be a tf.Operation, got %r' % (train_op,))
    _check(iterations_per_loop)
    if iterations_per_loop == 1:
        return train_op
    loop = IterationPerLoop()
    iteration_op = loop.create_iteration_per_loop_var(train_op)
    loop.load_iteration_per_loop_var(sess, iterations_per_loop)
    return iteration_op
