"""The fake npu_bridge (tests/fake_npu) against the real adapter's API, TF Adapter r1.7.0.

The facts come from docs/npu_bridge_api.md (read from github.com/Ascend/tensorflow,
branch r1.7.0 @ fbfb1f0): signatures and defaults, loss-scale manager arithmetic, the
overflow skip of NPULossScaleOptimizer, the NpuOptimizer session-option keys and precision
modes, the import chain through CANN's hccl package, and the data-parallel pieces.
"""
import importlib
import inspect
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

WORLD = 'hccl_world_group'

# Public names of the real npu_bridge.npu_init, r1.7.0 (API.md section 1).
REAL_NPU_INIT_NAMES = set('''
    NPURunConfig ProfilingConfig DumpConfig DynamicInputConfig NPUEstimator NPUEstimatorSpec
    NPUDistributedOptimizer KerasDistributeOptimizer npu_distributed_optimizer_wrapper
    NPUOptimizer npu_allreduce NPULossScaleOptimizer FixedLossScaleManager
    ExponentialUpdateLossScaleManager NPUCheckpointSaverHook NPUOutputTensorHook
    NPUBroadcastGlobalVariablesHook NPUBroadcastGlobalVariablesCallback npu_ops npu_rnn npu_scope
    util keras_to_npu npu_strategy npu_unary_ops hccl_ops create_group destroy_group
    get_rank_size get_local_rank_size get_rank_id get_local_rank_id
    get_world_rank_from_group_rank get_group_rank_from_world_rank set_split_strategy_by_idx
    set_split_strategy_by_size RewriterConfig config_pb2 rewriter_config_pb2 session
    session_run_hook tf os
    npu_config_proto init_resource shutdown_resource close_session npu_hooks_append
    npu_tf_optimizer npu_run_config_init npu_graph_options npu_optimizer_options
    set_keras_session_npu_config npu_keras_optimizer npu_callbacks_append npu_clear_session
'''.split())

# (module, attribute, signature as API.md gives it)
SIGNATURES = [
    ('npu_bridge.estimator.npu.npu_loss_scale_manager', 'FixedLossScaleManager',
     '(loss_scale, enable_overflow_check=True)'),
    ('npu_bridge.estimator.npu.npu_loss_scale_manager', 'ExponentialUpdateLossScaleManager',
     '(init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2, incr_ratio=2, '
     'decr_ratio=0.8)'),
    ('npu_bridge.estimator.npu.npu_loss_scale_optimizer', 'NPULossScaleOptimizer',
     '(opt, loss_scale_manager, is_distributed=False)'),
    ('npu_bridge.estimator.npu.npu_loss_scale_optimizer',
     'NPULossScaleOptimizer.compute_gradients',
     '(self, loss, var_list=None, gate_gradients=1, aggregation_method=None, '
     'colocate_gradients_with_ops=False, grad_loss=None)'),
    ('npu_bridge.estimator.npu.npu_loss_scale_optimizer', 'NPULossScaleOptimizer.apply_gradients',
     '(self, grads_and_vars, global_step=None, name=None)'),
    ('npu_bridge.estimator.npu.npu_optimizer', 'NPUDistributedOptimizer',
     '(optimizer, is_weight_update_sharding=False, name=None)'),
    ('npu_bridge.estimator.npu.npu_optimizer', 'NPUDistributedOptimizer.compute_gradients',
     '(self, *args, **kwargs)'),
    ('npu_bridge.estimator.npu.npu_optimizer', 'NPUDistributedOptimizer.apply_gradients',
     '(self, grads_and_vars, global_step=None, name=None)'),
    ('npu_bridge.estimator.npu.npu_optimizer', 'allreduce', '(tensor, average=True)'),
    ('npu_bridge.estimator.npu.npu_optimizer', 'npu_allreduce',
     "(values, reduction='mean', fusion=1, fusion_id=-1, group='hccl_world_group')"),
    ('npu_bridge.estimator.npu.npu_hook', 'NPUBroadcastGlobalVariablesHook',
     '(root_rank=None, index=None)'),
    ('npu_bridge.estimator.npu.util', 'set_iteration_per_loop',
     '(sess, train_op, iterations_per_loop=1)'),
    ('npu_bridge.estimator.npu_ops', 'initialize_system', '(name=None)'),
    ('npu_bridge.estimator.npu_ops', 'shutdown_system', '(name=None)'),
    ('npu_bridge.hccl.hccl_ops', 'allreduce',
     "(tensor, reduction, fusion=1, fusion_id=-1, group='hccl_world_group')"),
    ('npu_bridge.hccl.hccl_ops', 'broadcast',
     "(tensor, root_rank, fusion=2, fusion_id=0, group='hccl_world_group')"),
    ('npu_bridge.hccl.hccl_ops', 'allgather', "(tensor, rank_size, group='hccl_world_group')"),
    ('npu_bridge.npu_init', 'npu_config_proto', '(config_proto=None)'),
    ('hccl.manage.api', 'get_rank_size', "(group='hccl_world_group')"),
    ('hccl.manage.api', 'get_rank_id', "(group='hccl_world_group')"),
    ('hccl.manage.api', 'get_local_rank_size', "(group='hccl_world_group')"),
    ('hccl.manage.api', 'get_local_rank_id', "(group='hccl_world_group')"),
    ('hccl.manage.api', 'create_group', '(group, rank_num, rank_ids)'),
    ('hccl.manage.api', 'destroy_group', '(group)'),
    ('hccl.manage.api', 'get_world_rank_from_group_rank', '(group, group_rank_id)'),
    ('hccl.manage.api', 'get_group_rank_from_world_rank', '(world_rank_id, group)'),
    ('hccl.split.api', 'set_split_strategy_by_idx', "(idxList, group='hccl_world_group')"),
    ('hccl.split.api', 'set_split_strategy_by_size', "(dataSizeList, group='hccl_world_group')"),
]


@pytest.fixture
def npu(fake_npu, monkeypatch):
    """The fake adapter on a single-rank machine with a working CANN: its npu_init module."""
    for name in ('RANK_SIZE', 'RANK_ID', 'JOB_ID', 'FAKE_NPU_HCCL'):
        monkeypatch.delenv(name, raising=False)
    return importlib.import_module('npu_bridge.npu_init')


@pytest.fixture
def checks(npu):
    return importlib.import_module('npu_bridge.fake_checks')


def _resolve(module, attribute):
    value = importlib.import_module(module)
    for part in attribute.split('.'):
        value = getattr(value, part)
    return value


def _run(fetches, train_op=None):
    """`fetches` in a fresh session (variables initialised), after one run of `train_op`."""
    with tf.Session() as sess:
        sess.run([tf.global_variables_initializer(), tf.local_variables_initializer()])
        if train_op is not None:
            sess.run(train_op)
        return sess.run(fetches)


# ---- release, names, signatures -----------------------------------------------------------

def test_the_fake_says_which_adapter_release_it_follows(checks):
    import npu_bridge
    assert checks.RELEASE == 'r1.7.0'
    assert 'r1.7.0' in npu_bridge.__doc__ and 'fbfb1f0' in npu_bridge.__doc__
    for name in ('npu_bridge.estimator.npu.npu_loss_scale_manager',
                 'npu_bridge.estimator.npu.npu_loss_scale_optimizer',
                 'npu_bridge.estimator.npu.npu_optimizer', 'npu_bridge.estimator.npu.npu_hook',
                 'npu_bridge.estimator.npu.util', 'npu_bridge.hccl.hccl_ops',
                 'npu_bridge.npu_init'):
        assert 'r1.7.0' in importlib.import_module(name).__doc__, name


def test_npu_init_exports_only_names_the_real_one_has(npu):
    public = {n for n in vars(npu) if not n.startswith('_')}
    assert public - REAL_NPU_INIT_NAMES == set()
    assert {'NPULossScaleOptimizer', 'ExponentialUpdateLossScaleManager', 'FixedLossScaleManager',
            'NPUDistributedOptimizer', 'NPUBroadcastGlobalVariablesHook', 'npu_ops', 'util',
            'hccl_ops', 'get_rank_size', 'npu_config_proto'} <= public


@pytest.mark.parametrize('module, attribute, signature', SIGNATURES)
def test_signatures_are_the_real_ones(npu, module, attribute, signature):
    assert str(inspect.signature(_resolve(module, attribute))) == signature


# ---- loss-scale managers ------------------------------------------------------------------

def test_fixed_manager_rejects_a_scale_below_one_and_keeps_a_constant(npu):
    with pytest.raises(ValueError, match=r'^loss scale must be at least 1\.$'):
        npu.FixedLossScaleManager(0.5)
    with tf.Graph().as_default():
        manager = npu.FixedLossScaleManager(2 ** 10)
        assert manager.get_enable_overflow_check() is True
        assert npu.FixedLossScaleManager(1, enable_overflow_check=False) \
            .get_enable_overflow_check() is False
        scale = manager.get_loss_scale()
        assert scale.dtype == tf.float32 and not tf.global_variables()
        assert isinstance(manager.update_loss_scale(tf.constant(False)), tf.Operation)
        assert _run(scale) == 1024.0


def test_exponential_manager_keeps_three_non_trainable_global_variables(npu):
    with tf.Graph().as_default():
        with tf.name_scope('scaling'):
            manager = npu.ExponentialUpdateLossScaleManager(2 ** 32, 1000)
        found = [(v.op.name, v.dtype.base_dtype) for v in tf.global_variables()]
        assert found == [('scaling/loss_scale', tf.float32), ('scaling/good_steps', tf.int32),
                         ('scaling/bad_steps', tf.int32)]
        assert not tf.trainable_variables()
        assert manager.get_loss_scale() is tf.global_variables()[0]


class _Manager(object):
    """An ExponentialUpdateLossScaleManager driven step by step with a fed `finite` flag."""

    def __init__(self, npu, *args, **kwargs):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.manager = npu.ExponentialUpdateLossScaleManager(*args, **kwargs)
            self.finite = tf.placeholder(tf.bool, [])
            self.update = self.manager.update_loss_scale(self.finite)
            self.state = tf.global_variables()
            self.sess = tf.Session()
            self.sess.run(tf.global_variables_initializer())

    def steps(self, flags):
        """(scale, good, bad) after each of `flags` (True: finite step)."""
        out = []
        for flag in flags:
            self.sess.run(self.update, {self.finite: flag})
            scale, good, bad = self.sess.run(self.state)
            out.append((float(scale), int(good), int(bad)))
        return out


def test_exponential_manager_shrinks_after_n_overflows_which_need_not_be_consecutive(npu):
    m = _Manager(npu, 2 ** 32, 1000, decr_every_n_nan_or_inf=2, decr_ratio=0.5)
    big = 2.0 ** 32
    assert m.steps([False, False]) == [(big, 0, 1), (big / 2, 0, 0)]
    # A finite step in between resets good steps, not bad ones.
    assert m.steps([False, True, False]) == [(big / 2, 0, 1), (big / 2, 1, 1), (big / 4, 0, 0)]


def test_exponential_manager_default_decrease_is_0_8_and_never_below_one(npu):
    m = _Manager(npu, 4.0, 1000, decr_every_n_nan_or_inf=1)
    scales = [s for s, _, _ in m.steps([False] * 8)]
    np.testing.assert_allclose(scales, [3.2, 2.56, 2.048, 1.6384, 1.31072, 1.048576, 1.0, 1.0],
                               rtol=1e-6)


def test_exponential_manager_grows_after_n_finite_steps_in_a_row(npu):
    m = _Manager(npu, 8.0, 3, incr_ratio=4)
    assert m.steps([True, True, True]) == [(8.0, 1, 0), (8.0, 2, 0), (32.0, 0, 0)]
    # An overflow resets the run of good steps; growth resets the bad count as well.
    assert m.steps([True, False, True, True, True]) == [
        (32.0, 1, 0), (32.0, 0, 1), (32.0, 1, 1), (32.0, 2, 1), (128.0, 0, 0)]


def test_exponential_manager_does_not_grow_past_float32(npu):
    m = _Manager(npu, 3e38, 1)
    [(scale, good, bad)] = m.steps([True])
    assert np.float32(scale) == np.float32(3e38) and (good, bad) == (0, 0)


# ---- the loss-scale optimizer: scaling and the skip on overflow --------------------------

def _linear_step(npu, gradient, manager, **kwargs):
    """Weights w (two of them, start 1) and loss gradient * sum(w): every gradient is
    `gradient`. Returns (w, global_step, the wrapper, the train op)."""
    w = tf.get_variable('w', initializer=tf.ones([2]))
    step = tf.train.get_or_create_global_step()
    optimizer = npu.NPULossScaleOptimizer(tf.train.GradientDescentOptimizer(1.0), manager,
                                          **kwargs)
    train_op = optimizer.minimize(tf.reduce_sum(w) * gradient, global_step=step)
    return w, step, optimizer, train_op


@pytest.mark.parametrize('gradient, scale, applies', [
    (1.0, 65504.0, True),          # scaled gradient 65504: the float16 maximum, fits
    (1.0, 65536.0, False),         # 65536 does not
    (-0.25, 2.0 ** 18, False),     # -65536: the magnitude counts
    (-0.25, 2.0 ** 17, True),      # -32768
    (float('inf'), 1.0, False),    # non-finite at any scale
])
def test_the_inner_update_and_its_global_step_are_skipped_on_overflow(npu, gradient, scale,
                                                                     applies):
    with tf.Graph().as_default():
        manager = npu.FixedLossScaleManager(scale)
        w, step, optimizer, train_op = _linear_step(npu, gradient, manager)
        grads = optimizer.compute_gradients(tf.reduce_sum(w) * gradient)
        grad = _run(grads[0][0])
        w_after, step_after = _run([w, step], train_op)
    np.testing.assert_allclose(grad, [gradient] * 2)  # unscaled again
    expected = 1.0 - gradient if applies else 1.0
    np.testing.assert_allclose(w_after, [expected] * 2)
    assert step_after == (1 if applies else 0)


def test_overflow_check_off_applies_every_update(npu):
    with tf.Graph().as_default():
        manager = npu.FixedLossScaleManager(65536, enable_overflow_check=False)
        w, step, _, train_op = _linear_step(npu, 1.0, manager)
        assert _run(step, train_op) == 1


def test_exponential_scaling_halves_until_the_update_fits_then_applies(npu):
    with tf.Graph().as_default():
        manager = npu.ExponentialUpdateLossScaleManager(2 ** 20, 1000, decr_ratio=0.5)
        w, step, _, train_op = _linear_step(npu, 1.0, manager)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            history = []
            for _ in range(10):
                sess.run(train_op)
                history.append(sess.run([manager.get_loss_scale(), step]).copy())
    # 2^20 and 2^19 overflow twice each, 2^18 ... 2^17 too; 2^15 = 32768 fits.
    assert [s for s, _ in history] == [2.0 ** e for e in (20, 19, 19, 18, 18, 17, 17, 16, 16, 15)]
    assert [int(n) for _, n in history] == [0] * 10
    with tf.Graph().as_default():
        manager = npu.ExponentialUpdateLossScaleManager(2 ** 15, 1000, decr_ratio=0.5)
        w, step, _, train_op = _linear_step(npu, 1.0, manager)
        assert _run(step, train_op) == 1


def test_distributed_overflow_status_is_summed_over_the_ranks(npu, checks):
    with tf.Graph().as_default():
        manager = npu.FixedLossScaleManager(65536)
        w, step, _, train_op = _linear_step(npu, 1.0, manager, is_distributed=True)
        [call] = checks.calls('allreduce')
        assert (call.args['reduction'], call.args['fusion']) == ('sum', 0)
        assert isinstance(call.args['tensor'], list) and len(call.args['tensor']) == 1
        assert _run(step, train_op) == 0


def test_the_wrapper_has_no_public_state_and_no_slots_as_in_r1_7_0(npu, checks):
    with tf.Graph().as_default():
        manager = npu.ExponentialUpdateLossScaleManager(2 ** 32, 1000)
        w, _, optimizer, _ = _linear_step(npu, 1.0, manager)
        assert set(vars(optimizer)) <= {'_opt', '_loss_scale_manager', '_is_distributed',
                                        '_float_status'}
        for name in ('inner', 'loss_scale_manager', 'calls', 'args', 'is_distributed'):
            assert not hasattr(optimizer, name) and not hasattr(manager, name)
        for method, args in (('get_slot', (w, 'm')), ('get_slot_names', ()), ('variables', ())):
            with pytest.raises(AttributeError):
                getattr(optimizer, method)(*args)
        # What tests may know, they learn from the records.
        assert checks.constructed(optimizer)['loss_scale_manager'] is manager
        assert checks.constructed(manager)['decr_ratio'] == 0.8
        with pytest.raises(TypeError):
            npu.NPULossScaleOptimizer('adam', manager)


# ---- session options ----------------------------------------------------------------------

def _config(**params):
    """An NPU session config as npu_config_proto makes it, with NpuOptimizer `params`
    (values: bool -> .b, int -> .i, str -> .s) and precision_mode allow_mix_precision unless
    given."""
    import npu_bridge.npu_init as npu
    config = npu.npu_config_proto()
    entry = config.graph_options.rewrite_options.custom_optimizers[0]
    params.setdefault('precision_mode', 'allow_mix_precision')
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            entry.parameter_map[key].b = value
        elif isinstance(value, int):
            entry.parameter_map[key].i = value
        else:
            entry.parameter_map[key].s = value.encode()
    return config


def test_key_tables_per_release(checks):
    sizes = {r: len(keys) for r, keys in checks.NPU_OPTIMIZER_KEYS.items()}
    assert sizes == {'r1.1.1': 31, 'r1.5.0': 54, 'r1.6.0': 54, 'r1.7.0': 58, 'r1.8.0': 59}
    keys = checks.NPU_OPTIMIZER_KEYS['r1.7.0']
    assert (keys['use_off_line'], keys['precision_mode'], keys['iterations_per_loop']) == \
        ('b', 's', 'i')
    assert 'fp_point' in checks.NPU_OPTIMIZER_KEYS['r1.1.1'] and 'fp_point' not in keys


def test_a_plain_npu_config_passes(checks):
    assert checks.session_config_problems(_config(use_off_line=True)) == []
    assert checks.validate_session_config(_config()) is not None


@pytest.mark.parametrize('params, words', [
    (dict(use_offline=True), ["unknown NpuOptimizer key 'use_offline'"]),
    (dict(hccl_timeout=100), []),                                       # r1.7.0 key
    (dict(use_off_line='true'), ["'use_off_line' is read as bool (.b)", 'set as s']),
    (dict(iterations_per_loop='10'), ["'iterations_per_loop' is read as int (.i)"]),
    (dict(precision_mode='allow_mix_precision_fp16'), ['is not one of']),  # r1.12.0+ only
    (dict(precision_mode='mixed'), ['is not one of']),
    (dict(precision_mode=None), ['precision_mode unset', 'allow_fp32_to_fp16']),
    (dict(iterations_per_loop=0), ['must be >= 1']),
    (dict(modify_mixlist='ops.json', precision_mode='force_fp32'), ['modify_mixlist needs']),
    (dict(enable_dump=True), ['need dump_path']),
    (dict(profiling_mode=True), ['needs profiling_options']),
    (dict(graph_run_mode=2), ['graph_run_mode']),
    (dict(input_shape='x:1,2'), ['go together']),
])
def test_session_options_are_refused_outside_the_documented_keys_types_and_values(
        checks, params, words):
    problems = checks.session_config_problems(_config(**params))
    assert len(problems) == (1 if words else 0), problems
    assert all(w in problems[0] for w in words)
    if words:
        with pytest.raises(ValueError, match='NpuOptimizer session config refused'):
            checks.validate_session_config(_config(**params))


def test_keys_depend_on_the_release(checks):
    config = _config(hccl_timeout=100, soc_config='Ascend910')
    assert len(checks.session_config_problems(config, release='r1.8.0')) == 0
    assert len(checks.session_config_problems(config, release='r1.7.0')) == 1  # soc_config
    assert len(checks.session_config_problems(config, release='r1.5.0')) == 2  # + hccl_timeout


def test_the_config_needs_one_npu_optimizer_and_grappler_passes_off(checks):
    assert 'exactly 1' in checks.session_config_problems(tf.ConfigProto())[0]
    config = _config()
    config.graph_options.rewrite_options.remapping = 0  # DEFAULT
    assert 'remapping' in checks.session_config_problems(config)[0]


def _iterator_graph(one_shot):
    graph = tf.Graph()
    with graph.as_default():
        dataset = tf.data.Dataset.range(10).batch(2, drop_remainder=True).repeat()
        if one_shot:
            tf.data.make_one_shot_iterator(dataset).get_next()
        else:
            tf.data.make_initializable_iterator(dataset).get_next()
    return graph


def test_iterations_per_loop_above_one_is_refused_with_a_one_shot_iterator(checks):
    one_shot, initializable = _iterator_graph(True), _iterator_graph(False)
    assert any(op.type == 'OneShotIterator' for op in one_shot.get_operations())
    looped = _config(iterations_per_loop=10)
    [problem] = checks.session_config_problems(looped, one_shot)
    assert 'one-shot iterator' in problem
    assert checks.session_config_problems(looped, initializable) == []
    assert checks.session_config_problems(_config(iterations_per_loop=1), one_shot) == []
    assert 'dynamic_input' in checks.session_config_problems(
        _config(iterations_per_loop=10, dynamic_input=True), initializable)[0]


def test_npu_config_proto_is_the_real_helper(npu):
    config = tf.ConfigProto(log_device_placement=True)
    assert npu.npu_config_proto(config) is config
    rewrite = config.graph_options.rewrite_options
    assert [c.name for c in rewrite.custom_optimizers] == ['NpuOptimizer']
    assert not rewrite.custom_optimizers[0].parameter_map
    assert config.allow_soft_placement and not config.log_device_placement
    assert rewrite.remapping == npu.RewriterConfig.OFF
    assert rewrite.memory_optimization == npu.RewriterConfig.OFF
    assert config.graph_options.optimizer_options.global_jit_level == \
        npu.config_pb2.OptimizerOptions.OFF
    npu.npu_config_proto(config)
    assert len(rewrite.custom_optimizers) == 1


# ---- import chain: CANN's hccl package missing or broken ---------------------------------

@pytest.mark.parametrize('mode, error, text', [
    ('absent', ModuleNotFoundError, "No module named 'hccl'"),
    ('broken', ValueError, 'load hccl lib error'),
])
def test_npu_bridge_needs_a_loadable_hccl_package(fake_npu, monkeypatch, mode, error, text):
    monkeypatch.setenv('FAKE_NPU_HCCL', mode)
    with pytest.raises(error, match=text) as info:
        importlib.import_module('npu_bridge')  # r1.5+: even the package needs hccl
    if mode == 'absent':
        assert info.value.name == 'hccl'
    assert 'npu_bridge' not in sys.modules
    with pytest.raises(error):
        importlib.import_module('npu_bridge.npu_init')


def test_an_unknown_hccl_mode_is_refused(fake_npu, monkeypatch):
    monkeypatch.setenv('FAKE_NPU_HCCL', 'sometimes')
    with pytest.raises(ValueError, match='FAKE_NPU_HCCL'):
        importlib.import_module('npu_bridge.npu_init')


# ---- scale-out pieces ---------------------------------------------------------------------

def test_allreduce_types_reductions_and_emulated_ranks(npu, checks, monkeypatch):
    with tf.Graph().as_default():
        for dtype in (tf.int64, tf.float64, tf.bool):
            with pytest.raises(TypeError, match='not supported'):
                npu.hccl_ops.allreduce(tf.zeros([2], dtype), 'sum')
        with pytest.raises(ValueError, match='reduction'):
            npu.hccl_ops.allreduce(tf.zeros([2]), 'mean')
        variable = tf.Variable([1.0, 2.0])
        with pytest.raises(ValueError, match='variable'):
            npu.hccl_ops.allreduce(variable, 'sum')
        monkeypatch.setenv('RANK_SIZE', '4')
        x = tf.constant([1, -2], tf.int32)
        reduced = [npu.hccl_ops.allreduce(x, r) for r in ('sum', 'max', 'prod')]
        reduced.append(npu.hccl_ops.allreduce(variable.read_value(), 'sum'))
        gathered = npu.hccl_ops.allgather(tf.constant([7], tf.int64), 4)
        assert [c.args['reduction'] for c in checks.calls('allreduce')][-4:] == \
            ['sum', 'max', 'prod', 'sum']
        out = _run(reduced + [gathered])
    assert [list(o) for o in out] == [[4, -8], [1, -2], [1, 16], [4.0, 8.0], [7, 7, 7, 7]]


def test_broadcast_takes_and_returns_lists_and_fuses_one_type_only(npu, monkeypatch):
    monkeypatch.setenv('RANK_SIZE', '2')
    with tf.Graph().as_default():
        with pytest.raises(TypeError, match='list'):
            npu.hccl_ops.broadcast(tf.zeros([2]), 0)
        with pytest.raises(ValueError, match='root_rank'):
            npu.hccl_ops.broadcast([tf.zeros([2])], 2)
        mixed = [tf.zeros([2]), tf.constant(3, tf.int64)]
        with pytest.raises(TypeError, match=r'fused call \(fusion=2\) of several types '
                                            r'\(float32, int64\)'):
            npu.hccl_ops.broadcast(mixed, 0)
        out = npu.hccl_ops.broadcast(mixed, 1, fusion=0)
        assert isinstance(out, list) and [t.dtype for t in out] == [tf.float32, tf.int64]
        assert len(npu.hccl_ops.broadcast([tf.zeros([2]), tf.ones([3])], 0)) == 2


def _distributed_step(npu):
    w = tf.get_variable('w', initializer=tf.ones([2]))
    optimizer = npu.NPUDistributedOptimizer(tf.train.AdamOptimizer(0.1))
    return w, optimizer, optimizer.compute_gradients(tf.reduce_sum(w * w))


def test_distributed_optimizer_allreduces_only_for_several_ranks_and_needs_job_id(
        npu, checks, monkeypatch):
    with tf.Graph().as_default():
        w, optimizer, grads = _distributed_step(npu)
        assert optimizer.get_name() == 'DistributedAdamOptimizer'
        assert not checks.calls('allreduce')  # RANK_SIZE unset: gradients unchanged
        train_op = optimizer.apply_gradients(grads)
        assert optimizer.get_slot(w, 'm') is not None and optimizer.get_slot_names() == ['m', 'v']
        assert train_op is not None
    monkeypatch.setenv('RANK_SIZE', '2')
    with tf.Graph().as_default():
        with pytest.raises(AttributeError, match='JOB_ID'):
            _distributed_step(npu)
    monkeypatch.setenv('JOB_ID', '10086')
    with tf.Graph().as_default():
        _, _, grads = _distributed_step(npu)
        assert [c.args['reduction'] for c in checks.calls('allreduce')] == ['sum']
        np.testing.assert_allclose(_run(grads[0][0]), [2.0, 2.0])  # sum over 2 ranks / 2


def test_rank_helpers_answer_only_after_initialize_system(npu, checks, monkeypatch):
    monkeypatch.setenv('RANK_SIZE', '16')
    monkeypatch.setenv('RANK_ID', '9')
    with pytest.raises(ValueError, match='initialize_system'):
        npu.get_rank_size()
    with tf.Graph().as_default():
        init, shutdown = npu.npu_ops.initialize_system(), npu.npu_ops.shutdown_system()
        assert isinstance(init, tf.Operation) and init.name == 'NPUInit'
        with tf.Session(config=_config()) as sess:
            sess.run(init)
            assert (npu.get_rank_size(), npu.get_rank_id(), npu.get_local_rank_size(),
                    npu.get_local_rank_id()) == (16, 9, 8, 1)
            npu.create_group('pair', 2, [3, 9])
            assert npu.get_rank_id('pair') == 1 and npu.get_rank_size('pair') == 2
            assert npu.get_world_rank_from_group_rank('pair', 0) == 3
            assert npu.get_group_rank_from_world_rank(9, 'pair') == 1
            with pytest.raises(ValueError, match='unknown group'):
                npu.get_rank_size('other')
            npu.set_split_strategy_by_idx([20, 100])
            npu.destroy_group('pair')
            sess.run(shutdown)
            with pytest.raises(ValueError, match='initialize_system'):
                npu.get_rank_id()
    assert [c.name for c in checks.calls() if c.name.endswith(' ran')] == \
        ['NPUInit ran', 'NPUShutdown ran']


def test_set_iteration_per_loop_checks_and_groups_the_train_op(npu, checks):
    with tf.Graph().as_default():
        w = tf.get_variable('w', initializer=tf.ones([2]))
        train_op = tf.train.GradientDescentOptimizer(0.1).minimize(tf.reduce_sum(w))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            with pytest.raises(ValueError, match='tf.Operation'):
                npu.util.set_iteration_per_loop(sess, train_op.outputs, 10)
            with pytest.raises(TypeError):
                npu.util.set_iteration_per_loop(sess, train_op, 2.0)
            with pytest.raises(ValueError):
                npu.util.set_iteration_per_loop(sess, train_op, 0)
            assert npu.util.set_iteration_per_loop(sess, train_op, 1) is train_op
            looped = npu.util.set_iteration_per_loop(sess, train_op, 10)
            assert looped.name == 'IterationOp' and looped is not train_op
            names = sorted(v.op.name for v in tf.local_variables())
            assert names == ['npu_runconfig/' + n for n in
                             ('iterations_per_loop', 'loop_cond', 'one', 'zero')]
            assert all(v.dtype.base_dtype == tf.int64 for v in tf.local_variables())
            assert sess.run(tf.get_collection('npu_runconfig_iterations_per_loop')) == [9]
            # This session's iterations_per_loop is 1 (no NpuOptimizer option), the loop's 10.
            with pytest.raises(RuntimeError, match='loaded for 10 iterations.*option '
                                                   'iterations_per_loop is 1'):
                sess.run(looped)
    assert [c.args['iterations_per_loop'] for c in checks.calls('set_iteration_per_loop')] == \
        [10, 2.0, 0, 1, 10]


def _loop_graph(one_shot=False):
    """A counter step fed by an iterator over 0, 1, 2, ...: (graph, train_op, x, step, total)."""
    graph = tf.Graph()
    with graph.as_default():
        dataset = tf.data.Dataset.range(1000)
        if one_shot:
            x = tf.data.make_one_shot_iterator(dataset).get_next()
        else:
            iterator = tf.data.make_initializable_iterator(dataset)
            tf.add_to_collection('inits', iterator.initializer)
            x = iterator.get_next()
        step = tf.train.get_or_create_global_step()
        total = tf.get_variable('total', [], tf.int64, tf.zeros_initializer())
        train_op = tf.group(tf.assign_add(step, 1), tf.assign_add(total, x))
        tf.add_to_collection('inits', tf.global_variables_initializer())
    return graph, train_op, x, step, total


def _loop_session(graph, **params):
    """A session on `graph` with the NPU config (iterations_per_loop, data offload given)."""
    sess = tf.Session(graph=graph, config=_config(**params))
    sess.run(graph.get_collection('inits'))
    return sess


def test_the_device_loop_runs_the_step_n_times_and_fetches_the_last_iteration(npu, checks):
    graph, train_op, x, step, total = _loop_graph()
    with _loop_session(graph, iterations_per_loop=4, enable_data_pre_proc=True) as sess:
        looped = npu.util.set_iteration_per_loop(sess, train_op, 4)
        graph.finalize()
        first = sess.run({'op': looped, 'x': x})
        assert first['x'] == 3 and sess.run([step, total]) == [4, 0 + 1 + 2 + 3]
        second = sess.run({'op': looped, 'x': x})
        assert second['x'] == 7 and sess.run([step, total]) == [8, 28]
        sess.run(train_op)  # the bare step runs once, as on the card
        assert sess.run(step) == 9


def test_load_iteration_per_loop_var_works_on_a_finalized_graph(npu, checks):
    graph, train_op, x, step, _ = _loop_graph()
    loop = npu.util.IterationPerLoop()
    looped = loop.create_iteration_per_loop_var(train_op)  # while building the graph
    assert looped.name == 'IterationOp'
    graph.finalize()
    with _loop_session(graph, iterations_per_loop=3, enable_data_pre_proc=True) as sess:
        loop.load_iteration_per_loop_var(sess, 3)
        sess.run(looped)
        assert sess.run(step) == 3
    [load] = checks.calls('load_iteration_per_loop_var')
    assert load.args['iterations_per_loop'] == 3


@pytest.mark.parametrize('case, words', [
    ('other count', ['loaded for 4 iterations', 'iterations_per_loop is 2']),
    ('no data offload', ['needs enable_data_pre_proc']),
    ('one-shot iterator', ['OneShotIterator']),
    ('renamed loop op', ["named 'IterationOp_1'", 'exactly']),
    ('never loaded', ['never loaded']),
])
def test_the_device_loop_refuses_what_the_adapter_refuses_or_would_not_loop(npu, case, words):
    graph, train_op, _, step, _ = _loop_graph(one_shot=case == 'one-shot iterator')
    params = dict(iterations_per_loop=2 if case == 'other count' else 4,
                  enable_data_pre_proc=case != 'no data offload')
    with _loop_session(graph, **params) as sess:
        if case == 'never loaded':
            looped = npu.util.IterationPerLoop().create_iteration_per_loop_var(train_op)
        else:
            looped = npu.util.set_iteration_per_loop(sess, train_op, 4)
        if case == 'renamed loop op':
            looped = npu.util.set_iteration_per_loop(sess, train_op, 4)  # a second group
        with pytest.raises(RuntimeError, match='refused session.run') as info:
            sess.run(looped)
        assert all(w in str(info.value) for w in words), str(info.value)
        assert sess.run(step) == 0


def test_broadcast_hook_broadcasts_trainable_variables_only(npu, checks, monkeypatch):
    monkeypatch.setenv('RANK_SIZE', '8')
    with tf.Graph().as_default():
        tf.get_variable('kernel', [2])
        tf.get_variable('moving_mean', [2], trainable=False)
        hook = npu.NPUBroadcastGlobalVariablesHook(0, 0)
        hook.begin()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            hook.after_create_session(sess, None)
    [began] = checks.calls('NPUBroadcastGlobalVariablesHook.begin')
    assert began.args['variables'] == ['kernel']
    assert [c.args['root_rank'] for c in checks.calls('broadcast')] == [0]
