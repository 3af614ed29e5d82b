"""Checks that a training graph can be compiled for the Ascend NPU (and runs anywhere else).

The step is the input cone of the train op: everything it depends on (data and control
inputs), walked back to where data enters: `IteratorGetNext`, iterators, placeholders and
variables. The `tf.data` pipeline before the iterator runs on the host and is not audited,
except for the graph-wide ban on Python ops.
"""

import tensorflow.compat.v1 as tf

PYTHON_OPS = ('PyFunc', 'PyFuncStateless', 'EagerPyFunc')
# Where the walk back from the train op stops: the step's inputs and its state.
BOUNDARY_OPS = frozenset([
    'IteratorGetNext', 'IteratorGetNextSync', 'IteratorV2', 'Iterator', 'OneShotIterator',
    'AnonymousIterator', 'AnonymousIteratorV2', 'AnonymousIteratorV3',
    'Placeholder', 'PlaceholderV2', 'PlaceholderWithDefault',
    'VariableV2', 'Variable', 'VarHandleOp'])
# Ops whose value follows from their inputs' shapes; the compiler folds them when static.
SHAPE_OPS = ('Shape', 'ShapeN', 'Size')
LOSS_SCALE_MARK = 'lossscale'  # op names, lowercased and without '_', that show loss scaling


def audit_train_graph(graph, train_op, expect_loss_scale=False, max_shape_reports=10):
    """Problems that keep the step of `train_op` off the NPU, as strings; [] when clean.

    `train_op`: an op or tensor, or a list of them (everything one `session.run` computes).
    Checks: (1) no PyFunc/PyFuncStateless/EagerPyFunc op anywhere, graph functions included;
    (2) no tf.string output in the step (the iterator's outputs included); (3) every output
    in the step has a fully defined static shape, except values computed from static shapes
    only (tf.shape arithmetic, as in gradients), which the compiler folds; (4) with
    `expect_loss_scale`, some op of the step has 'loss_scale' or 'LossScale' in its name
    (the scale variable or the loss-scale optimizer's scope), so the step uses loss scaling.
    """
    cone = step_cone(graph, train_op)
    problems = python_op_problems(graph)
    problems += ['string tensor in the training step: %s (%s); decode strings in the tf.data '
                 'pipeline' % (op.name, op.type) for op in cone if _has_string_output(op)]
    problems += shape_problems(cone, max_shape_reports)
    if expect_loss_scale and not any(_shows_loss_scale(op) for op in cone):
        problems.append('no loss scaling in the training step: no op named like *loss_scale* '
                        'or *LossScale* feeds the train op; wrap the optimizer with '
                        'Device.wrap_optimizer and build the step with its minimize()')
    return problems


def step_cone(graph, train_op):
    """The ops `train_op` depends on through data and control inputs, in graph order.

    Boundary ops are included (their outputs enter the step) but not walked past.
    """
    targets = train_op if isinstance(train_op, (list, tuple)) else [train_op]
    stack = [getattr(t, 'op', t) for t in targets]
    seen = set()
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        if op.type not in BOUNDARY_OPS:
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op in seen]


def python_op_problems(graph):
    """Python-callback ops anywhere: in the graph and in its functions (tf.data, conds)."""
    found = [(op.name, op.type) for op in graph.get_operations() if op.type in PYTHON_OPS]
    for function in graph.as_graph_def().library.function:
        found += [('%s/%s' % (function.signature.name, node.name), node.op)
                  for node in function.node_def if node.op in PYTHON_OPS]
    return ['Python op %s (%s): the NPU cannot run Python callbacks; use TensorFlow ops'
            % pair for pair in found]


def shape_problems(cone, max_reports):
    """Step tensors without a fully defined static shape, the first `max_reports` of them."""
    folds = _ShapeFolding()
    offenders = ['%s %s' % (t.name, _shape_text(t)) for op in cone for t in op.outputs
                 if not t.shape.is_fully_defined() and not folds.foldable(op)
                 and not _is_workspace(op, t)]
    if not offenders:
        return []
    more = len(offenders) - max_reports
    tail = ' and %d more' % more if more > 0 else ''
    return ['tensor without a static shape: %s%s; the NPU compiles the step for fixed shapes '
            '(fixed batch, drop_remainder=True)' % (', '.join(offenders[:max_reports]), tail)]


class _ShapeFolding(object):
    """Which ops compute values known from static shapes alone (Shape of a static tensor,
    constants, and pure ops on those), like the shape arithmetic inside gradients."""

    def __init__(self):
        self._known = {}

    def foldable(self, op):
        """True when `op`'s outputs are compile-time constants (depth-first, no recursion).

        An input still being expanded closes a cycle (a while loop): not a constant.
        """
        stack, expanded = [op], set()
        while stack:
            top = stack[-1]
            if top in self._known:
                stack.pop()
            elif top not in expanded and self._needs_inputs(top):
                expanded.add(top)
                stack.extend(t.op for t in top.inputs
                             if t.op not in self._known and t.op not in expanded)
            else:
                self._known[top] = self._decide(top)
                stack.pop()
        return self._known[op]

    @staticmethod
    def _needs_inputs(op):
        return op.type != 'Const' and not _known_from_shapes(op) and _is_pure(op)

    def _decide(self, op):
        if op.type == 'Const' or _known_from_shapes(op):
            return True
        return (bool(op.inputs) and _is_pure(op)
                and all(self._known.get(t.op, False) for t in op.inputs))


def _known_from_shapes(op):
    """True for Shape, Size and Rank ops whose inputs' static shapes give their value."""
    if op.type in SHAPE_OPS:
        return all(t.shape.is_fully_defined() for t in op.inputs)
    return op.type == 'Rank' and op.inputs[0].shape.ndims is not None


def _is_pure(op):
    """Not stateful and not an input or state of the step."""
    return op.type not in BOUNDARY_OPS and not op.op_def.is_stateful


def _is_workspace(op, tensor):
    """FusedBatchNormV3's reserve_space_3: an opaque buffer for its gradient, sized by the kernel."""
    return op.type.startswith('FusedBatchNorm') and tensor.value_index == 5


def _has_string_output(op):
    return any(t.dtype == tf.string for t in op.outputs)


def _shows_loss_scale(op):
    return LOSS_SCALE_MARK in op.name.lower().replace('_', '')


def _shape_text(tensor):
    dims = tensor.shape.as_list() if tensor.shape.dims is not None else None
    if dims is None:
        return '(unknown rank)'
    return '(%s)' % ', '.join('?' if d is None else str(d) for d in dims)
