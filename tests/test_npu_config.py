"""libml.npu_config: device resolution, session configs, loss-scale wrapping, lazy npu_bridge."""
import importlib
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

from libml import graph_audit
from libml import npu_config
from libml.utils import UserError
from conftest import forget_npu_bridge

BF16_FLAGS = {'avx512f', 'avx512_bf16'}
HAS_BF16_REWRITE = npu_config.ONEDNN_BF16_FIELD in RewriterConfig.DESCRIPTOR.fields_by_name
needs_bf16_rewrite = pytest.mark.skipif(
    not HAS_BF16_REWRITE, reason='this TensorFlow (%s) has no oneDNN bfloat16 rewrite field '
    '(TF 1.15 lacks it)' % tf.VERSION)


def _bf16_rewrite(config):
    """The oneDNN bfloat16 rewrite setting of a session config; DEFAULT where TF lacks the field."""
    return getattr(config.graph_options.rewrite_options, npu_config.ONEDNN_BF16_FIELD,
                   RewriterConfig.DEFAULT)


def _npu_bridge_loaded():
    return any(name.split('.')[0] == 'npu_bridge' for name in sys.modules)


def _fake_checks():
    """The fake adapter's test-only module (records, session-option validation)."""
    return importlib.import_module('npu_bridge.fake_checks')


def _validated(device, graph=None):
    """`device`'s session config, refused by the fake adapter's checks when it would be wrong."""
    config = device.session_config()
    if device.name == 'npu':
        _fake_checks().validate_session_config(config, graph)
    return config


@pytest.fixture
def no_npu(monkeypatch):
    """No npu_bridge and no GPU: what `auto` sees on this workstation."""
    forget_npu_bridge()
    monkeypatch.setattr(npu_config, 'gpu_available', lambda: False)


def _npu_optimizer_entry(config):
    entries = config.graph_options.rewrite_options.custom_optimizers
    assert [e.name for e in entries] == ['NpuOptimizer']
    return entries[0].parameter_map


def _variable(name):
    """The global variable called `name` in the default graph."""
    [variable] = [v for v in tf.global_variables() if v.op.name == name]
    return variable


def _quiet_setup(*args, **kwargs):
    lines = []
    device = npu_config.setup(*args, log=lines.append, **kwargs)
    return device, lines


def _train_one_step(device, session_config=None):
    """Build a tiny regression step with `device`'s optimizer; its kernel before and after."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant(np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2))
        kernel = tf.get_variable('kernel', [2, 1], initializer=tf.zeros_initializer())
        loss = tf.reduce_mean(tf.square(tf.matmul(x, kernel) - 1.0))
        optimizer = device.wrap_optimizer(tf.train.GradientDescentOptimizer(0.5))
        train_op = optimizer.minimize(loss)
        with tf.Session(config=session_config) as sess:
            sess.run(tf.global_variables_initializer())
            before = sess.run([kernel, loss])
            sess.run(train_op)
            after = sess.run([kernel, loss])
    return graph, train_op, optimizer, before, after


# ---- names and resolution -------------------------------------------------------------

@pytest.mark.parametrize('kwargs, word', [({'device': 'tpu'}, "'tpu'"),
                                          ({'precision': 'fp16'}, "'fp16'")])
def test_unknown_names_list_the_valid_ones(kwargs, word):
    with pytest.raises(UserError) as info:
        npu_config.setup(**kwargs)
    message = str(info.value)
    assert word in message and '\n' not in message
    valid = npu_config.DEVICES if 'device' in kwargs else npu_config.PRECISIONS
    assert all(name in message for name in valid)


def test_npu_without_npu_bridge_is_one_clear_line(no_npu):
    with pytest.raises(UserError) as info:
        npu_config.setup('npu')
    assert str(info.value) == ('--device=npu needs the Ascend TensorFlow 1.15 image with CANN '
                               '(npu_bridge), or use --device=cpu/gpu')


def test_auto_without_npu_bridge_or_gpu_is_cpu(no_npu):
    device, _ = _quiet_setup('auto')
    assert device.name == 'cpu'


def test_auto_prefers_a_visible_gpu(no_npu, monkeypatch):
    monkeypatch.setattr(npu_config, 'gpu_available', lambda: True)
    assert _quiet_setup('auto')[0].name == 'gpu'


def test_auto_picks_npu_when_npu_bridge_imports(fake_npu):
    device, _ = _quiet_setup('auto', 'mixed')
    assert device.name == 'npu'
    assert 'npu_bridge.npu_init' in sys.modules


def test_npu_bridge_is_imported_only_for_the_npu(fake_npu):
    importlib.reload(npu_config)
    assert not _npu_bridge_loaded()
    _quiet_setup('cpu', 'mixed')
    _quiet_setup('gpu', 'mixed')
    assert not _npu_bridge_loaded()
    _quiet_setup('npu')
    assert _npu_bridge_loaded()


# ---- a broken CANN: hccl missing, or present but its library does not load ------------------

HCCL_FAILURES = [('absent', "ModuleNotFoundError: No module named 'hccl'"),
                 ('broken', 'ValueError: load hccl lib error')]


@pytest.mark.parametrize('mode, problem', HCCL_FAILURES)
def test_npu_with_a_broken_cann_is_one_line_naming_the_problem(fake_npu, monkeypatch, mode,
                                                               problem):
    monkeypatch.setenv('FAKE_NPU_HCCL', mode)
    with pytest.raises(UserError) as info:
        npu_config.setup('npu')
    message = str(info.value)
    assert '\n' not in message
    assert message.startswith('npu_bridge is installed but does not import (%s)' % problem)
    assert 'CANN' in message and '--device=cpu/gpu' in message


@pytest.mark.parametrize('mode, problem', HCCL_FAILURES)
def test_auto_with_a_broken_cann_is_the_same_one_line_not_a_silent_cpu_run(fake_npu, monkeypatch,
                                                                           mode, problem):
    monkeypatch.setenv('FAKE_NPU_HCCL', mode)
    monkeypatch.setattr(npu_config, 'gpu_available', lambda: False)
    with pytest.raises(UserError) as info:
        npu_config.setup('auto')
    assert str(info.value).startswith('npu_bridge is installed but does not import (%s)' % problem)


def test_auto_without_npu_bridge_is_silent(no_npu):
    assert _quiet_setup('auto')[1] == []


# ---- NPU ---------------------------------------------------------------------------------

@pytest.mark.parametrize('precision, mode', [('mixed', b'allow_mix_precision'),
                                             ('fp32', b'force_fp32')])
def test_npu_session_config(fake_npu, precision, mode):
    device, _ = _quiet_setup('npu', precision)
    config = _validated(device)
    for release in _fake_checks().NPU_OPTIMIZER_KEYS:  # every adapter branch knows our keys
        assert _fake_checks().session_config_problems(config, release=release) == []
    params = _npu_optimizer_entry(config)
    assert params['use_off_line'].b is True
    assert params['precision_mode'].s == mode
    rewrite = config.graph_options.rewrite_options
    assert rewrite.remapping == RewriterConfig.OFF
    assert rewrite.memory_optimization == RewriterConfig.OFF
    assert config.allow_soft_placement
    assert device.describe().startswith('device=npu precision=%s' % precision)


def test_npu_mixed_wraps_with_the_modelzoo_exponential_loss_scaling(fake_npu):
    device, _ = _quiet_setup('npu', 'mixed')
    graph, train_op, optimizer, before, after = _train_one_step(device)
    checks = _fake_checks()
    [made] = checks.calls('NPULossScaleOptimizer')
    assert made.obj is optimizer and made.args['is_distributed'] is False
    assert type(made.args['opt']) is tf.train.GradientDescentOptimizer
    manager = made.args['loss_scale_manager']
    assert type(manager).__name__ == 'ExponentialUpdateLossScaleManager'
    assert checks.constructed(manager) == dict(
        init_loss_scale=2 ** 32, incr_every_n_steps=1000, decr_every_n_nan_or_inf=2,
        incr_ratio=2, decr_ratio=0.5)
    assert [c.name for c in checks.calls() if c.obj is optimizer] == [
        'NPULossScaleOptimizer', 'NPULossScaleOptimizer.compute_gradients',
        'NPULossScaleOptimizer.apply_gradients']
    assert graph_audit.audit_train_graph(graph, train_op, expect_loss_scale=True) == []
    # From 2^32 the scaled gradients overflow float16: the first update is skipped.
    np.testing.assert_array_equal(after[0], before[0])


def test_npu_mixed_skips_updates_until_the_scale_fits_float16_then_trains(fake_npu):
    device, _ = _quiet_setup('npu', 'mixed')
    with tf.Graph().as_default():
        x = tf.constant(np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2))
        kernel = tf.get_variable('kernel', [2, 1], initializer=tf.zeros_initializer())
        loss = tf.reduce_mean(tf.square(tf.matmul(x, kernel) - 1.0))
        train_op = device.wrap_optimizer(tf.train.GradientDescentOptimizer(0.5)).minimize(loss)
        scale, bad = _variable('loss_scale'), _variable('bad_steps')
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            runs = 0  # train_op runs until the kernel moves
            while sess.run(kernel)[0, 0] == 0:
                assert sess.run(scale) == 2.0 ** (32 - runs // 2)
                assert sess.run(bad) == runs % 2
                sess.run(train_op)
                runs += 1
                assert runs < 70
            final_loss = sess.run(loss)
    # The update applies from the first scale at which scale * max|gradient| fits float16.
    gradient = np.abs(2 * np.linspace(-1, 1, 16).reshape(8, 2).mean(0)).max()  # 2/15
    fits = int(np.floor(np.log2(65504 / gradient)))
    assert runs == 2 * (32 - fits) + 1  # two overflows per halving, then the applied step
    assert final_loss < 1.0


def test_npu_fp32_leaves_the_optimizer_alone(fake_npu):
    device, _ = _quiet_setup('npu', 'fp32')
    optimizer = tf.train.AdamOptimizer(0.1)
    assert device.wrap_optimizer(optimizer) is optimizer
    assert not device.loss_scaling


# ---- GPU ---------------------------------------------------------------------------------

def test_gpu_fp32_config():
    device, _ = _quiet_setup('gpu', 'fp32')
    config = device.session_config()
    assert config.gpu_options.allow_growth and config.allow_soft_placement
    rewrite = config.graph_options.rewrite_options
    assert rewrite.auto_mixed_precision == RewriterConfig.DEFAULT
    assert not rewrite.custom_optimizers
    assert device.wrap_optimizer(tf.train.AdamOptimizer()).__class__ is tf.train.AdamOptimizer


def test_gpu_mixed_config_and_dynamic_loss_scaling_trains_a_step():
    device, _ = _quiet_setup('gpu', 'mixed')
    config = device.session_config()
    assert config.gpu_options.allow_growth
    assert config.graph_options.rewrite_options.auto_mixed_precision == RewriterConfig.ON
    assert device.describe() == ('device=gpu precision=mixed '
                                 '(float16 auto mixed precision, dynamic loss scaling)')
    # No GPU here: grappler skips the float16 rewrite, the loss scaling still runs.
    graph, train_op, optimizer, before, after = _train_one_step(device, config)
    assert isinstance(optimizer, tf.train.experimental.MixedPrecisionLossScaleOptimizer)
    assert after[1] < before[1] and not np.allclose(after[0], before[0])
    assert graph_audit.audit_train_graph(graph, train_op, expect_loss_scale=True) == []


# ---- CPU ---------------------------------------------------------------------------------

@needs_bf16_rewrite
def test_cpu_mixed_runs_bfloat16_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(npu_config, 'cpu_flags', lambda: set(BF16_FLAGS))
    monkeypatch.setattr(npu_config, '_onednn_enabled', lambda: True)
    device, lines = _quiet_setup('cpu', 'mixed')
    assert device.effective_precision == 'mixed' and lines == []
    rewrite = device.session_config().graph_options.rewrite_options
    assert rewrite.auto_mixed_precision_onednn_bfloat16 == RewriterConfig.ON
    assert device.describe() == 'device=cpu precision=mixed (bfloat16 via oneDNN)'
    optimizer = tf.train.AdamOptimizer()
    assert device.wrap_optimizer(optimizer) is optimizer


def test_cpu_mixed_falls_back_to_fp32_without_bfloat16(monkeypatch):
    monkeypatch.setattr(npu_config, 'cpu_flags', lambda: {'avx2', 'avx512f'})
    device, lines = _quiet_setup('cpu', 'mixed')
    assert (device.precision, device.effective_precision) == ('mixed', 'fp32')
    assert len(lines) == 1 and 'fp32' in lines[0] and 'bfloat16' in lines[0]
    assert _bf16_rewrite(device.session_config()) == RewriterConfig.DEFAULT
    assert 'running fp32' in device.describe()


def test_cpu_mixed_falls_back_when_tensorflow_lacks_the_rewrite(monkeypatch):
    monkeypatch.setattr(npu_config, 'cpu_flags', lambda: set(BF16_FLAGS))
    monkeypatch.setattr(npu_config, 'ONEDNN_BF16_FIELD', 'field_missing_in_tf_1_15')
    device, lines = _quiet_setup('cpu', 'mixed')
    assert device.effective_precision == 'fp32' and 'no oneDNN bfloat16 rewrite' in lines[0]


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nflags\t\t: fpu avx512_bf16 sse\n')
    assert npu_config.cpu_flags(str(cpuinfo)) == {'fpu', 'avx512_bf16', 'sse'}
    assert npu_config.cpu_flags(str(tmp_path / 'missing')) == set()


def test_cpu_fp32_config_is_plain():
    device, lines = _quiet_setup('cpu')
    config = device.session_config()
    assert config.allow_soft_placement and lines == []
    assert _bf16_rewrite(config) == RewriterConfig.DEFAULT
    assert device.describe() == 'device=cpu precision=fp32 (float32)'
