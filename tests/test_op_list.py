"""The op-list check (libml/graph_audit.py, libml/ascend_ops.py): every method's training step, fp32
and mixed, with and without loop sinking, built on the fake NPU, has only op types that the Ascend
adapter puts on the device; an op outside the list is refused in one line naming it and the code
that made it; the step's AI CPU ops are named; the shipped list is the vendor's."""

import collections
import inspect
import json
import os

import pytest
import tensorflow.compat.v1 as tf

import methods
import tiny_data
from conftest import ROOT
from libml import ascend_ops, data, graph_audit, hparams, layers, models, npu_config, train
from libml.utils import UserError

tf.disable_v2_behavior()

# (precision, iterations_per_loop) of every step built; 4: loop sinking through the fake adapter.
SETTINGS = [('fp32', 1), ('mixed', 1), ('fp32', 4), ('mixed', 4)]
# Flag values that switch on optional parts of a step (RealMix's OOD mask: top-k; its TSA).
OPTIONAL_PARTS = dict(percent_mask=0.25, tsa='linear_schedule')
VENDOR = os.path.join(ROOT, '..', 'shared', 'ascend-ops')  # the vendor facts, where present


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    return data.resolve(tiny_data.make_ssl_dataset(root) + '-6', root=root)


def run_hp(dataset, method, **changes):
    """A run of `method` at its flag defaults with optional parts on, on a small network (the
    networks' ops: `test_every_network_passes_too`)."""
    values = dict((spec.name, spec.default) for spec in methods.flag_specs(method))
    values.update((name, value) for name, value in OPTIONAL_PARTS.items() if name in values)
    values.update(method=method, replicas=1, arch='smallconv', filters=8, repeat=1, batch=8,
                  report_kimg=1, save_kimg=1, train_kimg=1, tune_kimg=0, eval_batch=16)
    values.update(changes)
    return hparams.hyper_parameters(values, dataset)


def npu_step(dataset, method, precision, loop, **changes):
    """(graph, train op) of a training step of `method` on the (fake) NPU, as Trainer builds it;
    with loop > 1, the looped op of util.set_iteration_per_loop."""
    device = npu_config.setup('npu', precision, log=lambda *a: None, iterations_per_loop=loop)
    graph = tf.Graph()
    with graph.as_default():
        train_op = train.training_graph(dataset, run_hp(dataset, method, **changes), device,
                                        methods.get(method))['train_op']
        if loop > 1:
            with tf.Session() as session:
                train_op = device.sink_loop(session, train_op)
            assert train_op.name == 'IterationOp'
    return graph, train_op


@pytest.mark.parametrize('precision, loop', SETTINGS)
@pytest.mark.parametrize('method', methods.names())
def test_every_method_step_passes_the_op_list_check(dataset, fake_npu, method, precision, loop):
    graph, train_op = npu_step(dataset, method, precision, loop)
    op_list = ascend_ops.load()  # an Ascend machine's own CANN list, else the shipped one
    assert graph_audit.op_list_problems(graph, train_op, op_list) == []
    lines = []
    graph_audit.check_npu_step('npu', graph, train_op, log=lines.append)
    assert len(lines) == 1 and op_list.source in lines[0], lines


@pytest.mark.parametrize('arch', [arch for arch in models.ARCHS if arch != 'smallconv'])
def test_every_network_passes_too(dataset, fake_npu, arch):
    graph, train_op = npu_step(dataset, 'realmix', 'mixed', 4, arch=arch)
    assert graph_audit.op_list_problems(graph, train_op, ascend_ops.load()) == []


def test_an_unlisted_op_is_refused_in_one_line_naming_its_type_and_code():
    """TF 1.15's stateless random ops (TF 2.x: their V2 and key-counter ops) are not listed."""
    graph = tf.Graph()
    with graph.as_default():
        weights = tf.get_variable('weights', [4, 3])
        noise = tf.random.stateless_uniform([4, 3], seed=[1, 2]); line = _line()  # noqa: E702
        loss = tf.reduce_sum(tf.square(weights + noise))
        train_op = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    unlisted = sorted(set(op.type for op in graph.get_operations()
                          if op.type.startswith('Stateless')))
    assert unlisted
    with pytest.raises(UserError) as info:
        graph_audit.check_npu_step('npu', graph, train_op, environ={})
    message = str(info.value)
    assert '\n' not in message and ascend_ops.read_shipped().source in message, message
    for op_type in unlisted:
        assert '%s (op ' % op_type in message, message
    assert message.count('made at tests/test_op_list.py:%d)' % line) == len(unlisted), message
    graph_audit.check_npu_step('cpu', graph, train_op)  # CPU and GPU: nothing to check
    graph_audit.check_npu_step('gpu', graph, train_op)


def test_ops_inside_called_functions_are_checked_and_named_by_their_caller():
    graph = tf.Graph()
    with graph.as_default():
        @tf.function  # noqa: E301  (a graph function: a PartitionedCall op in the step)
        def noisy(x):
            return x + tf.random.stateless_uniform([3], seed=[1, 2])
        weights = tf.get_variable('weights', [3])
        loss = tf.reduce_sum(noisy(weights)); line = _line()  # noqa: E702
        train_op = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    problems = graph_audit.op_list_problems(graph, [train_op, loss], ascend_ops.read_shipped())
    assert problems and all('test_op_list.py:%d)' % line in p for p in problems), problems
    assert all(p.startswith('StatelessRandom') for p in problems), problems


def test_ops_the_adapter_makes_are_its_own_business(fake_npu, monkeypatch, tmp_path):
    """The fake's cross-process allreduce is a PyFunc standing for HcomAllReduce; ours is not."""
    monkeypatch.setenv('FAKE_NPU_HCCL_DIR', str(tmp_path))
    monkeypatch.setenv('RANK_SIZE', '2')
    from npu_bridge.hccl import hccl_ops
    graph = tf.Graph()
    with graph.as_default():
        weights = tf.get_variable('weights', [3])
        summed = hccl_ops.allreduce(tf.identity(weights), 'sum')
        ours = tf.py_func(lambda x: x, [weights], tf.float32); line = _line()  # noqa: E702
    op_list = ascend_ops.read_shipped()
    assert graph_audit.op_list_problems(graph, summed, op_list) == []
    [problem] = graph_audit.op_list_problems(graph, [summed, ours], op_list)
    assert problem.startswith('PyFunc (op PyFunc, made at tests/test_op_list.py:%d)' % line)


def test_gradients_the_adapter_optimizer_asks_for_are_still_checked(fake_npu):
    """lgamma's gradient is digamma; neither op is listed. Through NPULossScaleOptimizer (the
    adapter's code calls tf.gradients), Digamma is still reported."""
    from npu_bridge.npu_init import FixedLossScaleManager, NPULossScaleOptimizer
    graph = tf.Graph()
    with graph.as_default():
        weights = tf.get_variable('weights', [3], initializer=tf.ones_initializer())
        loss = tf.reduce_sum(tf.math.lgamma(weights + 1.))
        optimizer = NPULossScaleOptimizer(tf.train.GradientDescentOptimizer(0.1),
                                          FixedLossScaleManager(8))
        train_op = optimizer.minimize(loss)
    problems = graph_audit.op_list_problems(graph, train_op, ascend_ops.read_shipped())
    assert [p.split()[0] for p in problems] == ['Digamma', 'Lgamma'], problems
    assert 'made at tests/fake_npu' not in problems[0], problems  # named as TensorFlow's or ours


def test_the_trainer_refuses_an_unlisted_op_before_training(dataset, fake_npu, tmp_path,
                                                            monkeypatch):
    """An installed CANN (newer layout) whose list lacks RandomShuffle: MixMatch's partners."""
    opp = _install_cann(tmp_path, 'built-in/framework/tensorflow', drop=['RandomShuffle'])
    monkeypatch.setenv('ASCEND_OPP_PATH', opp)
    device = npu_config.setup('npu', 'fp32', log=lambda *a: None)
    hp = run_hp(dataset, 'mixmatch')
    with pytest.raises(UserError) as info:
        train.Trainer(str(tmp_path / 'run'), hp, dataset, device, methods.get('mixmatch'))
    message = str(info.value)
    shuffle_line = _source_line(layers.random_permutation, 'tf.random.shuffle')
    assert message.count(' (op ') == 1 and '\n' not in message, message
    assert 'RandomShuffle (op ' in message and 'libml/layers.py:%d)' % shuffle_line in message
    assert 'npu_supported_ops.json' in message and opp in message
    assert not os.path.exists(str(tmp_path / 'run')), 'refused before anything was written'


@pytest.mark.parametrize('layout', ascend_ops.JSON_LAYOUTS)
def test_the_installed_cann_list_is_read_where_the_adapter_reads_it(tmp_path, layout):
    opp = _install_cann(tmp_path, os.path.dirname(layout), drop=['Mul'])
    environ = {'ASCEND_OPP_PATH': opp}
    assert ascend_ops.installed_json(environ) == os.path.join(opp, layout)
    op_list = ascend_ops.load(environ)
    assert 'Mul' not in op_list.op_types and 'Conv2D' in op_list.op_types
    assert op_list.source == "the installed CANN's %s" % os.path.join(opp, layout)
    assert op_list.engines['RandomGamma'] == 'aicpu'  # engines: always the shipped list's


def test_without_an_installed_cann_the_shipped_list_is_used(tmp_path):
    environ = {'ASCEND_OPP_PATH': str(tmp_path)}
    assert ascend_ops.installed_json(environ) == ''
    op_list = ascend_ops.load(environ)
    assert op_list.source == 'libml/ascend_ops.txt (CANN 20.1 and 8.1.RC1, 685 op types)'
    assert len(op_list.op_types) == 685 and 'Conv2D' in op_list.op_types


def test_a_broken_installed_list_is_one_line(tmp_path):
    opp = _install_cann(tmp_path, 'framework/built-in/tensorflow')
    with open(ascend_ops.installed_json({'ASCEND_OPP_PATH': opp}), 'w') as f:
        f.write('{"Conv2D": ')
    with pytest.raises(UserError, match='^cannot read the NPU op list .*npu_supported_ops.json'):
        ascend_ops.load({'ASCEND_OPP_PATH': opp})


def test_the_ai_cpu_ops_of_a_step_are_named_with_their_code(dataset, fake_npu):
    graph, train_op = npu_step(dataset, 'mixup', 'fp32', 1)
    found = graph_audit.ai_cpu_ops(graph, train_op, ascend_ops.read_shipped())
    gamma_line = _source_line(layers.sample_beta, 'tf.random.gamma')
    assert found['RandomGamma'] == 'libml/layers.py:%d' % gamma_line, found
    assert 'Conv2D' not in found and 'BroadcastArgs' not in found  # AI Core; folded shape math
    assert all(ascend_ops.read_shipped().engines[t] in ascend_ops.AI_CPU_ENGINES for t in found)


# ---- the shipped list is the vendor's ---------------------------------------------------------

INTERSECTION = 'tf_ops_npu_supported.in_both_20.1_and_8.1rc1.txt'
ENGINE_MAP = 'tf_op_engine_map.tsv'
# Name-level engines miss fusion passes; the vendor facts (README there) place these on AI Core.
FUSED_ON_AI_CORE = {
    'SparseSoftmaxCrossEntropyWithLogits': 'OneHotD + SoftmaxCrossEntropyWithLogits'}


@pytest.mark.skipif(not os.path.isdir(VENDOR), reason='no ../shared/ascend-ops next to the project')
def test_the_shipped_list_is_the_vendor_intersection_with_its_engines():
    with open(ascend_ops.SHIPPED) as f:
        assert f.read() == shipped_text(VENDOR)


def shipped_text(folder):
    """libml/ascend_ops.txt as derived from the vendor files in `folder` (header included)."""
    ops = _listed(os.path.join(folder, INTERSECTION))
    engines = dict((row.split('\t')[0], row.split('\t')[5:8])
                   for row in _listed(os.path.join(folder, ENGINE_MAP))[1:])
    tags = collections.OrderedDict(
        (op, 'aicore' if op in FUSED_ON_AI_CORE else engine_tag(engines[op])) for op in ops)
    with open(os.path.join(folder, ENGINE_MAP)) as f:
        sources = [line.strip() for line in f if line.startswith('# Sources:')][0]
    counts = collections.Counter(tags.values())
    head = [
        '# The TF op types the Ascend 910 TF Adapter puts on the device in both CANN 20.1 and',
        '# 8.1.RC1: the keys of npu_supported_ops.json common to the two releases (a stand-in for',
        '# the 5.x/6.x releases between them), from ../shared/ascend-ops/%s.' % INTERSECTION,
        '# tests/test_op_list.py derives this file from there and checks that it is unchanged.',
        '# Column 2, where the kernel runs, by op name, from ../shared/ascend-ops/%s' % ENGINE_MAP,
        '# (the kernel libraries of CANN 20.1, canndev 2022-06 and 8.1.RC1; dtype, format and',
        '# fusion passes decide the real engine): aicore = an AI Core kernel in 2022-06 or 8.1.RC1',
        '# (and in 20.1, or no kernel there); aicpu-20.1 = AI CPU in 20.1, AI Core later;',
        '# aicpu = AI CPU kernels only; none = no kernel library (graph-engine ops: Const, NoOp,',
        '# control flow, variables, collectives).',
        '# %s: aicore, fused into %s.' % list(FUSED_ON_AI_CORE.items())[0],
        sources,
        '# count: %d (%s)' % (len(ops), ', '.join('%s %d' % (tag, counts[tag]) for tag in
                                                  ('aicore', 'aicpu', 'aicpu-20.1', 'none')))]
    return '\n'.join(head + ['%s\t%s' % pair for pair in tags.items()]) + '\n'


def engine_tag(engines):
    """The tag of one engine-map row: its kernel libraries in 20.1, canndev 2022-06, 8.1.RC1."""
    def ai_core(libraries):
        return 'AIC' in libraries.replace('AICPU', '')
    if any(ai_core(libraries) for libraries in engines[1:]):
        return 'aicore' if ai_core(engines[0]) or engines[0] == '-' else 'aicpu-20.1'
    return 'aicpu' if any('AICPU' in libraries for libraries in engines) else 'none'


# ---- helpers ---------------------------------------------------------------------------------

def _listed(path):
    with open(path) as f:
        return [line.rstrip('\n') for line in f if line.strip() and not line.startswith('#')]


def _install_cann(tmp_path, folder, drop=()):
    """An OPP folder holding `folder`/npu_supported_ops.json: the shipped list less `drop`."""
    opp = str(tmp_path / 'opp')
    os.makedirs(os.path.join(opp, folder))
    ops = dict((op, {'isGray': False, 'isHeavy': False})
               for op in ascend_ops.read_shipped().op_types if op not in drop)
    with open(os.path.join(opp, folder, 'npu_supported_ops.json'), 'w') as f:
        json.dump(ops, f)
    return opp


def _line():
    """The caller's line number."""
    return inspect.currentframe().f_back.f_lineno


def _source_line(function, text):
    """The file line number of the first line of `function` holding `text`."""
    lines, first = inspect.getsourcelines(function)
    return first + [i for i, line in enumerate(lines) if text in line][0]
