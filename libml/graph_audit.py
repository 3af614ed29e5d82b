"""Checks that a training graph can be compiled for the Ascend NPU (and runs anywhere else).

The step is the input cone of the train op: everything it depends on (data and control
inputs), walked back to where data enters: `IteratorGetNext`, iterators, placeholders and
variables. The `tf.data` pipeline before the iterator runs on the host and is not audited,
except for the graph-wide ban on Python ops.

The op-list check (`check_npu_step`): on the NPU every op type of the step must be one the
Ascend adapter puts on the device (`libml/ascend_ops.py`: the installed CANN's list, else the
shipped one); it also names the ops of the step that run on the AI CPU.
"""

import os

import tensorflow.compat.v1 as tf

from libml import ascend_ops
from libml.utils import UserError

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
# Op types the op-list check lets through although CANN's list lacks them: they feed the step
# and are never looked up in it. The adapter keeps dataset and iterator ops on the host, or,
# with loop sinking's data offload (enable_data_pre_proc), replaces IteratorGetNext by its own
# GetNext (om_partition_subgraphs_pass.cc); _Arg/_Retval are the parameters of a function body.
# Const, NoOp, Identity, control flow and variables need no exemption: the list has them.
FEEDS_THE_STEP = frozenset(['IteratorGetNext', 'IteratorGetNextSync', 'IteratorV2', 'Iterator',
                            'OneShotIterator', 'AnonymousIterator', 'AnonymousIteratorV2',
                            'AnonymousIteratorV3', '_Arg', '_Retval'])
# Ops the adapter's own Python code makes (its collectives, its loss-scale overflow test) are not
# checked: the adapter declares its ops in the same list, and under the test fake they are
# emulations with plain TF ops (PyFunc for cross-process collectives, IsFinite) it never makes.
ADAPTER_PACKAGE = 'npu_bridge'
GRADIENT_BUILDERS = ('gradients_util.py', 'gradients_impl.py')  # TensorFlow's tf.gradients
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSORFLOW_PACKAGES = ('tensorflow', 'tensorflow_core', 'tensorflow_estimator')


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
    stack = [getattr(t, 'op', t) for t in tf.nest.flatten(train_op)]
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


def check_npu_step(device_name, graph, train_op, log=print, environ=None):
    """On the NPU: UserError (one line) when the step has an op type the device list lacks,
    else log which list passed it and the step's AI CPU ops. Elsewhere: nothing."""
    if device_name != 'npu':
        return
    op_list = ascend_ops.load(environ)
    problems = op_list_problems(graph, train_op, op_list)
    if problems:
        raise UserError('--device=npu: the training step has op types that the Ascend device '
                        'list (%s) lacks, which the adapter would run on the host: %s; rewrite '
                        'that code with listed ops (docs/npu.md, the op-list check)'
                        % (op_list.source, '; '.join(problems)))
    on_ai_cpu = ai_cpu_ops(graph, train_op, op_list)
    log('NPU op list: every op type of the step is in %s; on the AI CPU: %s' % (
        op_list.source, ', '.join('%s (%s)' % pair for pair in on_ai_cpu.items()) or 'none'))


def op_list_problems(graph, train_op, op_list):
    """'OpType (op NAME, made at FILE:LINE)' for each op type of the step that `op_list`
    (an ascend_ops.OpList) lacks, naming its first op; [] when every one is listed."""
    first = {}
    for op_type, op in step_op_types(graph, train_op):
        if (op_type not in op_list.op_types and op_type not in FEEDS_THE_STEP
                and op_type not in first and not _made_by_adapter(op)):
            first[op_type] = op
    return ['%s (op %s, made at %s)' % (op_type, op.name, creation_site(op))
            for op_type, op in sorted(first.items())]


def ai_cpu_ops(graph, train_op, op_list):
    """{op type: where its first op was made} for the step's ops whose kernels are on the AI CPU
    (`op_list.engines`), in graph order. Ops the compiler folds into constants (shape
    arithmetic on static shapes) are left out: they never run."""
    folds = _ShapeFolding()
    found = {}
    for op_type, op in step_op_types(graph, train_op):
        if (op_list.engines.get(op_type) in ascend_ops.AI_CPU_ENGINES and op_type not in found
                and not (op.type == op_type and folds.foldable(op)) and not _made_by_adapter(op)):
            found[op_type] = creation_site(op)
    return found


def step_op_types(graph, train_op):
    """(op type, op) for every op of the step: its cone, then the nodes of the functions its ops
    call (If, While, PartitionedCall bodies), each paired with the op that calls it."""
    cone = step_cone(graph, train_op)
    pairs = [(op.type, op) for op in cone]
    callers = [op for op in cone if _called_functions(op.node_def)]
    if callers:
        library = dict((f.signature.name, f) for f in graph.as_graph_def().library.function)
        for op in callers:
            pairs += [(node.op, op) for node in _function_nodes(op.node_def, library)]
    return pairs


def _called_functions(node_def):
    """Names of the functions a NodeDef's attributes name (then_branch, body, f, ...)."""
    names = []
    for value in node_def.attr.values():
        if value.HasField('func'):
            names.append(value.func.name)
        names += [f.name for f in value.list.func]
    return names


def _function_nodes(node_def, library):
    """The NodeDefs of the functions `node_def` calls, and of those they call in turn."""
    stack, seen, nodes = _called_functions(node_def), set(), []
    while stack:
        name = stack.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        for node in library[name].node_def:
            nodes.append(node)
            stack.extend(_called_functions(node))
    return nodes


def creation_site(op):
    """'file:line' of the code that made `op`: the innermost frame of its creation stack in this
    project (relative path), else the innermost outside TensorFlow, else the op's name. The
    adapter's frames count only when nothing else does (its optimizer calls tf.gradients)."""
    frames = [tuple(frame)[:2] for frame in op.traceback
              if not _is_tensorflow(tuple(frame)[0])]
    frames = [f for f in frames if not _in_adapter(f[0])] or frames
    ours = [(os.path.relpath(path, PROJECT_ROOT), line) for path, line in frames
            if _in_project(path)]
    if not (ours or frames):
        return op.name
    return '%s:%d' % (ours or frames)[-1]


def _in_adapter(path):
    return ADAPTER_PACKAGE in os.path.normpath(path).split(os.sep)


def _made_by_adapter(op):
    """True when the adapter's code (npu_bridge) is on `op`'s creation stack and TensorFlow's
    gradient builder is not (the gradients of our model, which the adapter's loss-scale
    optimizer asks TensorFlow for, are ours)."""
    paths = [tuple(frame)[0] for frame in op.traceback]
    return (any(_in_adapter(path) for path in paths)
            and not any(os.path.basename(path) in GRADIENT_BUILDERS for path in paths))


def _is_tensorflow(path):
    parts = os.path.normpath(path).split(os.sep)
    return any(package in parts for package in TENSORFLOW_PACKAGES)


def _in_project(path):
    """Under the project folder and not in an installed package (a virtualenv inside it)."""
    path = os.path.abspath(path)
    return (path.startswith(PROJECT_ROOT + os.sep)
            and not any(d in path.split(os.sep) for d in ('site-packages', 'dist-packages')))


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
