"""Device shim: the only module that knows about CPU, GPU and Ascend NPU specifics.

`setup(device, precision)` resolves the device and returns a `Device`, which builds the
session config and wraps the optimizer with loss scaling where the precision needs it.
`npu_bridge` is imported here only, and only when the NPU is asked for or detected.
"""

import importlib

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

from libml.names import DEVICES, PRECISIONS
from libml.utils import UserError

NPU_MISSING = ('--device=npu needs the Ascend TensorFlow 1.15 image with CANN (npu_bridge), '
               'or use --device=cpu/gpu')

# CANN `precision_mode` per requested precision. The NPU default for training,
# allow_fp32_to_fp16, silently runs convs and matmuls in float16, so fp32 must be explicit.
# must_keep_origin_dtype would be the literal choice, but the CANN docs say it cannot be used
# when an operator such as Conv2D has no float32 kernel on the AI Core, as on Ascend 910
# (Atlas training series; frameworks default to it only from the A2 series, 910B, on).
# force_fp32 keeps vector ops in float32 and runs cube ops (conv, matmul) with float16
# inputs and float32 outputs: the closest to float32 that Ascend 910 compiles. On a 910B,
# must_keep_origin_dtype here would give true float32.
NPU_PRECISION_MODE = {'fp32': 'force_fp32', 'mixed': 'allow_mix_precision'}

# /proc/cpuinfo flags that mean the CPU computes bfloat16 natively.
BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')
ONEDNN_BF16_FIELD = 'auto_mixed_precision_onednn_bfloat16'


def cpu_flags(path='/proc/cpuinfo'):
    """The CPU feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except (IOError, OSError):
        pass
    return set()


def onednn_bf16_problem():
    """Why this machine cannot run the oneDNN bfloat16 rewrite, or '' when it can."""
    if ONEDNN_BF16_FIELD not in RewriterConfig.DESCRIPTOR.fields_by_name:
        return 'this TensorFlow %s has no oneDNN bfloat16 rewrite' % tf.VERSION
    if not cpu_flags() & set(BF16_CPU_FLAGS):
        return 'the CPU has no bfloat16 instructions (%s)' % '/'.join(BF16_CPU_FLAGS)
    if not _onednn_enabled():
        return 'oneDNN is disabled (TF_ENABLE_ONEDNN_OPTS=0)'
    return ''


def _onednn_enabled():
    """True when this TensorFlow build runs its CPU kernels through oneDNN."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # builds without the probe: the rewrite field alone decides
        return True
    return bool(_pywrap_util_port.IsMklEnabled())


def gpu_available():
    """True when TensorFlow sees a GPU; lists devices without allocating GPU memory."""
    try:
        return bool(tf.config.experimental.list_physical_devices('GPU'))
    except Exception:  # pylint: disable=broad-except  # any failure here means: no usable GPU
        return False


def import_npu_bridge(required):
    """Import `npu_bridge.npu_init` (registers the NPU ops); None when absent and not required.

    The import needs CANN as well as npu_bridge: CANN's `hccl` package raises ValueError, not
    ImportError, when its library does not load, and the adapter's own library can fail in
    other ways. Any such failure is a one-line UserError, under `auto` too: an Ascend job with a
    broken CANN must not train on the CPU for days unnoticed. Only a missing npu_bridge lets
    `auto` fall back (silently).
    """
    try:
        return importlib.import_module('npu_bridge.npu_init')
    except Exception as e:  # pylint: disable=broad-except  # any failure: the NPU is unusable
        absent = (isinstance(e, ImportError)
                  and getattr(e, 'name', None) in ('npu_bridge', 'npu_bridge.npu_init'))
        if absent and not required:
            return None
        if absent:
            raise UserError(NPU_MISSING)
        problem = 'npu_bridge is installed but does not import (%s: %s)' % (
            type(e).__name__, ' '.join(str(e).split()))
        raise UserError(problem + '; check the CANN environment (source its set_env.sh), or '
                        'use --device=cpu/gpu')


def _check_choice(kind, value, valid):
    if value not in valid:
        raise UserError('unknown %s %r: use one of %s' % (kind, value, ', '.join(valid)))


def resolve_device(device):
    """The concrete device name for `device`; imports npu_bridge when the NPU is involved."""
    _check_choice('--device', device, DEVICES)
    if device == 'npu':
        import_npu_bridge(required=True)
        return 'npu'
    if device == 'auto':
        if import_npu_bridge(required=False) is not None:
            return 'npu'
        return 'gpu' if gpu_available() else 'cpu'
    return device


def setup(device='auto', precision='fp32', log=print):
    """Validate the names, resolve `auto` and return the `Device` to train on."""
    _check_choice('--precision', precision, PRECISIONS)
    name = resolve_device(device)
    effective = precision
    if name == 'cpu' and precision == 'mixed':
        problem = onednn_bf16_problem()
        if problem:
            log('precision=mixed falls back to fp32 on this CPU: %s' % problem)
            effective = 'fp32'
    return Device(name, precision, effective)


class Device(object):
    """A resolved device and precision: session config, optimizer wrapping, log line."""

    def __init__(self, name, precision, effective_precision):
        self.name = name
        self.precision = precision
        self.effective_precision = effective_precision

    @property
    def mixed(self):
        """True when mixed precision really runs."""
        return self.effective_precision == 'mixed'

    @property
    def loss_scaling(self):
        """True when `wrap_optimizer` adds loss scaling (float16 mixed precision)."""
        return self.mixed and self.name in ('gpu', 'npu')

    def session_config(self):
        """A fresh tf.ConfigProto for this device and precision."""
        config = tf.ConfigProto(allow_soft_placement=True)
        _CONFIGURE[self.name](config, self.mixed)
        return config

    def wrap_optimizer(self, optimizer):
        """`optimizer` with loss scaling where float16 needs it; unchanged otherwise.

        Build the step with the returned optimizer's minimize() (or its compute_gradients()
        then apply_gradients()): those scale the loss and unscale the gradients.
        """
        if not self.loss_scaling:
            return optimizer
        if self.name == 'npu':
            return _npu_loss_scale_optimizer(optimizer)
        return tf.train.experimental.MixedPrecisionLossScaleOptimizer(
            optimizer, tf.train.experimental.DynamicLossScale())

    def describe(self):
        """One line for the logs, e.g. 'device=cpu precision=mixed (bfloat16 via oneDNN)'."""
        text = 'device=%s precision=%s' % (self.name, self.precision)
        if self.precision != self.effective_precision:
            return text + ' (running fp32: no bfloat16 support here)'
        return text + ' (%s)' % _PRECISION_NOTE[(self.name, self.effective_precision)]


_PRECISION_NOTE = {
    ('cpu', 'fp32'): 'float32',
    ('cpu', 'mixed'): 'bfloat16 via oneDNN',
    ('gpu', 'fp32'): 'float32',
    ('gpu', 'mixed'): 'float16 auto mixed precision, dynamic loss scaling',
    ('npu', 'fp32'): 'precision_mode=' + NPU_PRECISION_MODE['fp32'],
    ('npu', 'mixed'): 'precision_mode=%s, NPU loss scaling' % NPU_PRECISION_MODE['mixed'],
}


def _configure_cpu(config, mixed):
    """oneDNN bfloat16 rewrite of convs and matmuls; bfloat16 needs no loss scaling."""
    if mixed:
        setattr(config.graph_options.rewrite_options, ONEDNN_BF16_FIELD, RewriterConfig.ON)


def _configure_gpu(config, mixed):
    """Grow GPU memory on demand; float16 grappler rewrite for mixed precision."""
    config.gpu_options.allow_growth = True
    if mixed:
        config.graph_options.rewrite_options.auto_mixed_precision = RewriterConfig.ON


def _configure_npu(config, mixed):
    """NpuOptimizer compiles the whole step offline for the Ascend chip."""
    rewrite = config.graph_options.rewrite_options
    npu = rewrite.custom_optimizers.add()
    npu.name = 'NpuOptimizer'
    npu.parameter_map['use_off_line'].b = True
    mode = NPU_PRECISION_MODE['mixed' if mixed else 'fp32']
    npu.parameter_map['precision_mode'].s = mode.encode('ascii')
    # The Ascend migration guides require both passes off: remapping would fuse ops into
    # TF-only kernels, and TF's memory optimizer clashes with the NPU's own memory planning.
    # The guides write RewriterConfig.OFF for memory_optimization too (as a MemOptType that is
    # MANUAL: only hand-annotated nodes, so off for this graph); kept exactly as documented.
    rewrite.remapping = RewriterConfig.OFF
    rewrite.memory_optimization = RewriterConfig.OFF


_CONFIGURE = {'cpu': _configure_cpu, 'gpu': _configure_gpu, 'npu': _configure_npu}


def _npu_loss_scale_optimizer(optimizer):
    """NPULossScaleOptimizer with the exponential manager the Ascend ModelZoo uses.

    From 2^32 the scale halves every second overflowing step; on each of those steps the
    adapter skips the inner (Adam) update and the rest of our step still runs (docs/npu.md).
    """
    lso = importlib.import_module('npu_bridge.estimator.npu.npu_loss_scale_optimizer')
    lsm = importlib.import_module('npu_bridge.estimator.npu.npu_loss_scale_manager')
    manager = lsm.ExponentialUpdateLossScaleManager(
        init_loss_scale=2 ** 32, incr_every_n_steps=1000, decr_every_n_nan_or_inf=2,
        decr_ratio=0.5)
    return lso.NPULossScaleOptimizer(optimizer, manager)
