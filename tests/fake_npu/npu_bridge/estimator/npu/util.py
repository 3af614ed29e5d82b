"""Fake `npu_bridge.estimator.npu.util`: iterations per loop (r1.7.0), and the device loop itself.

What the real adapter does (github.com/Ascend/tensorflow @ r1.7.0, read for these facts):
- `util.create_or_get_var(name)` makes (or finds) an int64 resource variable
  `npu_runconfig/<name>` in the collections `npu_runconfig_<name>` and LOCAL_VARIABLES;
  `set_iteration_per_loop(sess, train_op, n=1)` checks `train_op` is a tf.Operation (ValueError)
  and n a positive int (TypeError / ValueError), returns `train_op` when n is 1, else makes the
  four variables (iterations_per_loop, loop_cond, zero, one), loads n-1, 0, 0, 1 into them with
  `Variable.load` and returns `tf.group(train_op, name="IterationOp")`.
- `IterationPerLoop.create_iteration_per_loop_var(train_op)` makes the variables and the group at
  graph-building time; `load_iteration_per_loop_var(sess, n)` only calls `Variable.load`, which
  runs each variable's initializer with the value fed (TF's `Variable.load`): no new ops, so it
  works on a finalized graph.
- The loop: `GeOp::AddNodeAttrs` (kernels/geop_npu.cc) marks a graph as looping only when it
  holds a node named exactly "IterationOp", and only when the session option
  `iterations_per_loop` > 1 (`SetNeedIteration`); the device then runs the step n times per
  `session.run` and the fetched values are those of the last iteration.

The fake loops the same way, on the CPU: importing this module wraps `tf.Session.run` once per
process; a run that fetches an op named IterationOp runs that op's train op n-1 extra times
first, n being the session's `iterations_per_loop`. Stricter than the adapter, such a run is
refused (RuntimeError) when: the loaded `npu_runconfig/iterations_per_loop` + 1 differs from the
session's n; n > 1 without `enable_data_pre_proc` (the offload that puts IteratorGetNext inside
the device loop: om_partition_subgraphs_pass.cc makes Iterator/IteratorGetNext NPU candidates only
with it; without it every iteration would see one host batch) or without an initializable
iterator (`MakeIterator`; a `OneShotIterator` is the adapter's LOG(FATAL)); or when the session
loops and the fetched loop op is named otherwise (`IterationOp_1`, `scope/IterationOp`), which
the card would run once per session.run.
"""
import re

import tensorflow.compat.v1 as tf

import fake_npu_state

_NPU_RUNCONFIG = 'npu_runconfig'
_NAMES = ('iterations_per_loop', 'loop_cond', 'zero', 'one')
_LOOP_OP = 'IterationOp'
_LOOKS_LIKE_LOOP_OP = re.compile(r'(^|/)IterationOp(_\d+)?$')


def _check(iterations_per_loop):
    if isinstance(iterations_per_loop, bool) or not isinstance(iterations_per_loop, int):
        raise TypeError('iterations_per_loop must be an int, got %r' % (iterations_per_loop,))
    if iterations_per_loop <= 0:
        raise ValueError('iterations_per_loop must be positive, got %d' % iterations_per_loop)


def _check_train_op(train_op):
    if not isinstance(train_op, tf.Operation):
        raise ValueError('train_op must be a tf.Operation, got %r' % (train_op,))


def create_or_get_var(var_name):
    """The loop variable `npu_runconfig/<var_name>` of the default graph (made when missing)."""
    graph = tf.get_default_graph()
    collection = '%s_%s' % (_NPU_RUNCONFIG, var_name)
    found = graph.get_collection(collection)
    if len(found) > 1:
        raise RuntimeError('Multiple var in collection.')
    if found:
        return found[0]
    with tf.variable_scope(_NPU_RUNCONFIG, reuse=tf.AUTO_REUSE):
        return tf.get_variable(var_name, initializer=tf.zeros_initializer(), shape=[],
                               dtype=tf.int64, trainable=False, use_resource=True,
                               collections=[collection, tf.GraphKeys.LOCAL_VARIABLES])


def _load(variables, sess, iterations_per_loop):
    """Variable.load of the four loop variables (feeds their initializers: no new ops)."""
    for variable, value in zip(variables, (iterations_per_loop - 1, 0, 0, 1)):
        variable.load(value, session=sess)


class IterationPerLoop(object):
    """The loop variables of the device training loop."""

    def create_iteration_per_loop_var(self, train_op):
        _check_train_op(train_op)
        with train_op.graph.as_default():
            self._variables = [create_or_get_var(name) for name in _NAMES]
            return tf.group(train_op, name=_LOOP_OP)

    def load_iteration_per_loop_var(self, sess, iterations_per_loop=1):
        _check(iterations_per_loop)
        fake_npu_state.record('load_iteration_per_loop_var', sess=sess,
                              iterations_per_loop=iterations_per_loop)
        _load(self._variables, sess, iterations_per_loop)


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    """`train_op` run `iterations_per_loop` times on the device per session.run."""
    fake_npu_state.record('set_iteration_per_loop', sess=sess, train_op=train_op,
                          iterations_per_loop=iterations_per_loop)
    _check_train_op(train_op)
    _check(iterations_per_loop)
    if iterations_per_loop == 1:
        return train_op
    with train_op.graph.as_default():
        variables = [create_or_get_var(name) for name in _NAMES]
        _load(variables, sess, iterations_per_loop)
        return tf.group(train_op, name=_LOOP_OP)


# ---- the device loop, emulated around tf.Session.run -------------------------------------

def _npu_parameters(config):
    """The NpuOptimizer parameter map of a session config, or {} without one."""
    if config is None:
        return {}
    for entry in config.graph_options.rewrite_options.custom_optimizers:
        if entry.name == 'NpuOptimizer':
            return entry.parameter_map
    return {}


def _fetched_ops(graph, fetches):
    """The operations named by `fetches` (ops, tensors, variables, names; nested)."""
    ops = []
    for fetch in tf.nest.flatten(fetches):
        try:
            element = graph.as_graph_element(fetch)
        except (TypeError, ValueError, KeyError):
            continue
        ops.append(element if isinstance(element, tf.Operation) else element.op)
    return ops


def _loaded_problem(session, loops, run):
    """Why the loaded loop count disagrees with the session's `loops`, or ''."""
    found = session.graph.get_collection('%s_iterations_per_loop' % _NPU_RUNCONFIG)
    if not found:
        return 'no npu_runconfig/iterations_per_loop variable: use util.set_iteration_per_loop'
    try:
        loaded = run(session, found[0]) + 1
    except tf.errors.FailedPreconditionError:
        return 'npu_runconfig/iterations_per_loop was never loaded in this session'
    if loaded != loops:
        return ('the loop variables were loaded for %d iterations, the session option '
                'iterations_per_loop is %d' % (loaded, loops))
    return ''


def _loop_problem(session, loop_op, loops, parameters, run):
    """Why the card would not loop `loop_op` `loops` (> 1) times in `session`, or ''."""
    if loop_op.name != _LOOP_OP:
        return ('the loop op is named %r: the adapter loops only an op named exactly %r '
                '(geop_npu.cc), so the card would run the step once per session.run'
                % (loop_op.name, _LOOP_OP))
    kinds = set(op.type for op in session.graph.get_operations())
    if 'OneShotIterator' in kinds:
        return 'a OneShotIterator in a looping graph (the adapter\'s LOG(FATAL))'
    if 'MakeIterator' not in kinds:
        return 'iterations_per_loop > 1 needs an initializable iterator (make_initializable_iterator)'
    if not ('enable_data_pre_proc' in parameters and parameters['enable_data_pre_proc'].b):
        return ('iterations_per_loop > 1 needs enable_data_pre_proc: without the data offload '
                'every iteration of the device loop sees the same host batch')
    return _loaded_problem(session, loops, run)


def _session_loops(session):
    """(iterations_per_loop, NpuOptimizer parameters) of a session's config (1 when unset)."""
    parameters = _npu_parameters(getattr(session, '_config', None))
    loops = parameters['iterations_per_loop'].i if 'iterations_per_loop' in parameters else 1
    return loops, parameters


def _looping_run(original):
    """tf.Session.run that runs an IterationOp's train op n-1 extra times first."""
    def run(self, fetches, *args, **kwargs):
        loop_ops = [op for op in _fetched_ops(self.graph, fetches)
                    if _LOOKS_LIKE_LOOP_OP.search(op.name)]
        if loop_ops:
            loops, parameters = _session_loops(self)
            if loops > 1:
                problem = _loop_problem(self, loop_ops[0], loops, parameters, original)
            else:  # the card runs it once; refused only when loaded for another count
                problem = _loaded_problem(self, 1, original)
                problem = problem if 'loaded for' in problem else ''
            if problem:
                raise RuntimeError('fake npu_bridge: refused session.run of %s: %s'
                                   % (loop_ops[0].name, problem))
            for _ in range(loops - 1):
                original(self, loop_ops[0].control_inputs)
        return original(self, fetches, *args, **kwargs)
    run.fake_npu_loop = True
    return run


if not getattr(tf.Session.run, 'fake_npu_loop', False):
    tf.Session.run = _looping_run(tf.Session.run)
