"""Device shim: the only module that knows about CPU, GPU and Ascend NPU specifics.

`setup(device, precision)` resolves the device and returns a `Device`, which builds the
session config and wraps the optimizer with loss scaling where the precision needs it.
`npu_bridge` is imported here only, and only when the NPU is asked for or detected.

Data-parallel training (`Cluster`): one process per Ascend device through HCCL (RANK_SIZE,
RANK_ID, RANK_TABLE_FILE), several CPU/GPU workers through MultiWorkerMirroredStrategy
(TF_CONFIG), or several GPUs / logical CPUs of one process through MirroredStrategy
(--replicas). The `Device` says how to shard the input, build the step per replica, start the
session and who is chief; training code asks it and knows nothing of the engines.
"""

import collections
import contextlib
import importlib
import json
import os
import socket
import time

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

from libml import collectives, layers, rank_table
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

# HCCL environment defaults, set when the job does not set them (docs/many_devices.md). JOB_ID: the
# adapter's allreduce reads its job info from the environment and fails without one (npu_common.py);
# the Ascend ModelZoo scripts set a constant, as scripts/launch.py does. HCCL_EXEC_TIMEOUT: how long a
# rank waits in a collective (the 910 takes it // 68 * 68; CANN allows up to 17340 s): generous,
# since the other ranks wait while rank 0 evaluates and the first evaluation compiles its graphs.
# HCCL_CONNECT_TIMEOUT: how long ranks wait for each other to set up the links (120 to 7200 s).
DEFAULT_JOB_ID = '10385'
HCCL_ENV_DEFAULTS = (('JOB_ID', DEFAULT_JOB_ID), ('HCCL_EXEC_TIMEOUT', '7140'),
                     ('HCCL_CONNECT_TIMEOUT', '1800'))

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


def setup(device='auto', precision='fp32', log=print, replicas=1, environ=None,
          iterations_per_loop=1):
    """Validate the names, resolve `auto` and return the `Device` to train on."""
    _check_choice('--precision', precision, PRECISIONS)
    name = resolve_device(device)
    if iterations_per_loop < 1 or (iterations_per_loop > 1 and name != 'npu'):
        raise UserError('--iterations_per_loop=%d: the device loop is the NPU\'s; use 1 on %s'
                        % (iterations_per_loop, name))
    effective = precision
    if name == 'cpu' and precision == 'mixed':
        problem = onednn_bf16_problem()
        if problem:
            log('precision=mixed falls back to fp32 on this CPU: %s' % problem)
            effective = 'fp32'
    cluster = cluster_from_env(name, replicas, environ)
    if cluster.engine == 'hccl':
        hccl_environment(os.environ if environ is None else environ)
    return Device(name, precision, effective, cluster, iterations_per_loop)


def hccl_environment(environ):
    """Set HCCL_ENV_DEFAULTS where `environ` lacks them (before the first session starts HCCL)."""
    for name, value in HCCL_ENV_DEFAULTS:
        if not environ.get(name):
            environ[name] = value


class Cluster(collections.namedtuple('Cluster', 'engine workers rank local_replicas')):
    """Where this process stands in data-parallel training: engine single, hccl, multiworker
    or mirrored; `workers` processes, this one's `rank`, replicas inside each process."""

    @property
    def replicas(self):
        return self.workers * self.local_replicas

    @property
    def chief(self):
        return self.rank == 0


SINGLE = Cluster('single', 1, 0, 1)


def _int_env(environ, name):
    try:
        return int(environ[name])
    except ValueError:
        raise UserError('%s=%r is not an integer' % (name, environ[name]))


def cluster_from_env(device_name, replicas=1, environ=None):
    """The cluster this process belongs to, from the Ascend rank variables or TF_CONFIG."""
    environ = os.environ if environ is None else environ
    if replicas < 1:
        raise UserError('--replicas=%d: give 1 or more' % replicas)
    if device_name == 'npu':
        if replicas > 1:
            raise UserError('--replicas is for CPU/GPU; on Ascend run one process per device '
                            '(RANK_SIZE, RANK_ID, RANK_TABLE_FILE; scripts/launch.py --engine=hccl)')
        return _hccl_cluster(environ)
    if environ.get('TF_CONFIG'):
        if replicas > 1:
            raise UserError('--replicas=%d with TF_CONFIG: each worker trains one replica; start '
                            'one worker per device instead' % replicas)
        return _multiworker_cluster(environ['TF_CONFIG'])
    return Cluster('mirrored', 1, 0, replicas) if replicas > 1 else SINGLE


def job_cluster(environ=None):
    """This process's place in a multi-process job, from the Ascend rank variables or TF_CONFIG,
    before any device is chosen (run_sh.py: who stages the data and publishes)."""
    environ = os.environ if environ is None else environ
    if 'RANK_SIZE' in environ:
        return _hccl_cluster(environ)
    if environ.get('TF_CONFIG'):
        return _multiworker_cluster(environ['TF_CONFIG'])
    return SINGLE


def job_token(environ=None):
    """A text shared by the processes of one job and different from job to job: the job id,
    the TF_CONFIG cluster (fresh ports per job) and the rank table's path and age."""
    environ = os.environ if environ is None else environ
    table = environ.get('RANK_TABLE_FILE', '')
    cluster = json.loads(environ['TF_CONFIG']).get('cluster') if environ.get('TF_CONFIG') else None
    age = os.path.getmtime(table) if os.path.isfile(table) else 0
    return json.dumps([environ.get('JOB_ID', ''), cluster, table, age], sort_keys=True)


def _hccl_cluster(environ):
    if 'RANK_SIZE' not in environ:
        return SINGLE
    size = _int_env(environ, 'RANK_SIZE')
    rank = _int_env(environ, 'RANK_ID') if 'RANK_ID' in environ else 0
    if size < 1 or not 0 <= rank < size:
        raise UserError('RANK_ID=%d is outside [0, RANK_SIZE=%d)' % (rank, size))
    if size == 1:
        return SINGLE
    ranks = hccl_ranks(environ)
    if len(ranks) != size:
        raise UserError('rank table %s lists %d ranks, but RANK_SIZE=%d'
                        % (environ['RANK_TABLE_FILE'], len(ranks), size))
    return Cluster('hccl', size, rank, 1)


def hccl_ranks(environ):
    """The ranks of the job's HCCL rank table: RANK_TABLE_FILE names it, or the folder holding it."""
    named = environ.get('RANK_TABLE_FILE', '')
    table = rank_table.table_file(named)
    if not table:
        if not named:
            problem = 'not set'
        elif os.path.isdir(named):
            problem = 'the folder %s holds no rank table (%s or one *.json)' % (
                named, rank_table.MODELARTS_TABLE)
        else:
            problem = 'no such file ' + named
        raise UserError('RANK_SIZE=%s needs RANK_TABLE_FILE naming the HCCL rank table or its '
                        'folder (%s); ModelArts sets it, locally use scripts/launch.py '
                        '--engine=hccl --rank_table=FILE' % (environ.get('RANK_SIZE'), problem))
    return rank_table.read(table)


def data_stager(environ=None):
    """The rank that stages the job's data on this process's node: the node's first rank of the
    HCCL rank table (node-local /cache on every server), else rank 0."""
    environ = os.environ if environ is None else environ
    cluster = job_cluster(environ)
    if cluster.engine != 'hccl':
        return 0
    return rank_table.node_first_rank(hccl_ranks(environ), cluster.rank)


def _multiworker_cluster(text):
    try:
        config = json.loads(text)
        workers = list(config['cluster']['worker'])
        task = config['task']
        kind, rank = task['type'], int(task['index'])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError('TF_CONFIG does not parse (%s: %s); expected {"cluster": {"worker": '
                        '["host:port", ...]}, "task": {"type": "worker", "index": I}}'
                        % (type(e).__name__, e))
    if kind != 'worker' or not 0 <= rank < len(workers):
        raise UserError('TF_CONFIG task %s %d is not one of the %d workers of its cluster'
                        % (kind, rank, len(workers)))
    return Cluster('multiworker', len(workers), rank, 1) if len(workers) > 1 else SINGLE


class Device(object):
    """A resolved device and precision: session config, optimizer wrapping, log line, and the
    data-parallel engine (input shards, per-replica step, session, chief, broadcast, barrier)."""

    def __init__(self, name, precision, effective_precision, cluster=SINGLE, iterations_per_loop=1):
        self.name = name
        self.precision = precision
        self.effective_precision = effective_precision
        self.cluster = cluster
        self.iterations_per_loop = iterations_per_loop  # steps per session.run on the NPU
        self.strategy = None
        self._server = None
        if cluster.engine == 'multiworker':  # reads TF_CONFIG; graph mode starts no server itself
            self.strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy()
        elif cluster.engine == 'mirrored':
            kind = 'gpu' if name == 'gpu' else 'cpu'
            self.strategy = tf.distribute.MirroredStrategy(
                devices=['/%s:%d' % (kind, i) for i in range(cluster.local_replicas)])

    @property
    def mixed(self):
        """True when mixed precision really runs."""
        return self.effective_precision == 'mixed'

    @property
    def loss_scaling(self):
        """True when `wrap_optimizer` adds loss scaling (float16 mixed precision)."""
        return self.mixed and self.name in ('gpu', 'npu')

    @property
    def chief(self):
        """Whether this process writes checkpoints, summaries and reports (rank 0)."""
        return self.cluster.chief

    def session_config(self):
        """A fresh tf.ConfigProto for this device, precision and engine."""
        config = tf.ConfigProto(allow_soft_placement=True)
        _CONFIGURE[self.name](config, self.mixed)
        if self.cluster.engine == 'hccl':
            _npu_optimizer(config).parameter_map['hcom_parallel'].b = True
        if self.iterations_per_loop > 1:  # the step loops on the device, fed by the data offload
            parameters = _npu_optimizer(config).parameter_map
            parameters['iterations_per_loop'].i = self.iterations_per_loop
            parameters['enable_data_pre_proc'].b = True
            parameters['mix_compile_mode'].b = False
        if self.cluster.engine == 'mirrored' and self.name == 'cpu':
            config.device_count['CPU'] = self.cluster.local_replicas  # logical CPU devices
        if self.strategy is not None:
            config = self.strategy.update_config_proto(config)
        return config

    def session(self, graph, threads=0):
        """A session for `graph` (`threads` > 0: that many intra- and inter-op threads); a
        multi-worker one runs on this worker's tf.distribute.Server, which needs the same
        collective settings as the session (else the first collective hangs)."""
        config = self.session_config()
        if threads:
            config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = threads
        if self.cluster.engine != 'multiworker':
            return tf.Session(graph=graph, config=config)
        if self._server is None:
            self._server = tf.distribute.Server(tf.train.ClusterSpec(_tf_config_cluster()),
                                                job_name='worker', task_index=self.cluster.rank,
                                                config=config)
        return tf.Session(target=self._server.target, graph=graph, config=config)

    def scope(self):
        """Where the model, optimizer and step are built: the in-process strategy's scope (one
        copy of each variable per replica). Workers hold plain variables, as HCCL ranks do: all
        they share crosses in `mean_over_workers`, so decay, EMA and the optimizer stay local.
        CPU bfloat16 also takes the activation gradient with fast bfloat16 kernels (docs/speed.md)."""
        scopes = contextlib.ExitStack()
        if self.cluster.engine == 'mirrored':
            scopes.enter_context(self.strategy.scope())
        if self.name == 'cpu' and self.mixed:
            scopes.enter_context(layers.bfloat16_gradients())
        return scopes

    def global_batch(self, batch):
        """Images one step trains on over every replica (`batch` per replica)."""
        return batch * self.cluster.replicas

    def input_shards(self):
        """(index, count) of the input shard of each replica this process runs."""
        first = self.cluster.rank * self.cluster.local_replicas
        return [(first + i, self.cluster.replicas) for i in range(self.cluster.local_replicas)]

    def replicate(self, step_fn, local_inputs):
        """Run `step_fn(inputs) -> {name: scalar}` once per replica on its own inputs (one entry of
        `local_inputs` per local replica); the scalars come back averaged over every replica
        (under HCCL too, so every rank logs, checks divergence and votes to stop alike; workers'
        step_fn averages them itself, with its gradients, through `mean_over_workers`)."""
        if self.cluster.engine != 'mirrored':
            return self._mean_over_ranks(step_fn(local_inputs[0]))
        first = self.cluster.rank * self.cluster.local_replicas
        names = []

        def replica_fn():  # one stacked all-reduce for every scalar, not one per scalar
            replica = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
            scalars = step_fn(local_inputs[int(replica) - first])
            names[:] = sorted(scalars)
            return tf.stack([tf.cast(scalars[k], tf.float32) for k in names])

        per_replica = self.strategy.extended.call_for_each_replica(replica_fn)
        mean = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
        return dict(zip(names, tf.unstack(mean)))

    def _mean_over_ranks(self, scalars):
        """The scalars averaged over the HCCL ranks, in one stacked float32 all-reduce; unchanged
        otherwise: workers average them with the gradients, in the step's one collective
        (`mean_over_workers`, called by graph.training_update)."""
        if self.cluster.engine != 'hccl':
            return scalars
        names = sorted(scalars)
        stacked = tf.stack([tf.cast(scalars[k], tf.float32) for k in names])
        hccl_ops = importlib.import_module('npu_bridge.hccl.hccl_ops')
        mean = hccl_ops.allreduce(stacked, 'sum') / float(self.cluster.workers)
        return dict(zip(names, tf.unstack(mean)))

    def mean_over_workers(self, tensors):
        """Multi-worker: the tensors averaged over the workers in one packed collective (the
        step's gradients, batch-norm moments and logged scalars); unchanged otherwise (an
        in-process strategy averages its replicas itself, HCCL's optimizer the gradients)."""
        if self.cluster.engine != 'multiworker':
            return list(tensors)
        return collectives.mean_over_workers(self.strategy, tensors, self.cluster.workers)

    def sum_over_replicas(self, tensors):
        """From inside a replica's step: the tensors (static shapes) summed over every replica of
        every process in one float32 collective, so that a method's state is the same on all;
        without gradient."""
        tensors = list(tensors)
        vector = collectives.pack(tensors)
        if self.cluster.engine == 'mirrored':  # merge_call: all_reduce's gradient wrapper cannot
            # trace reads of mirrored variables (and the statistics need no gradient)
            vector = tf.distribute.get_replica_context().merge_call(_batch_sum, args=(vector,))
        elif self.cluster.engine == 'multiworker':
            vector = collectives.strategy_sum(self.strategy, vector)
        elif self.cluster.engine == 'hccl':
            vector = importlib.import_module('npu_bridge.hccl.hccl_ops').allreduce(vector, 'sum')
        else:
            return tensors
        # No gradient flows back through a collective (nor should it: these are statistics).
        return [tf.stop_gradient(t) for t in collectives.unpack(vector, tensors)]

    def sink_loop(self, session, train_op):
        """The op that runs `train_op` iterations_per_loop times per session.run on the NPU."""
        if self.iterations_per_loop == 1:
            return train_op
        util = importlib.import_module('npu_bridge.estimator.npu.util')
        return util.set_iteration_per_loop(session, train_op, self.iterations_per_loop)

    def replica_loss(self, loss):
        """What each replica minimises so that the averaged gradient comes out: an in-process
        strategy sums its replicas' gradients (outside Estimator); workers and HCCL's optimizer
        average them."""
        return loss / self.cluster.replicas if self.cluster.engine == 'mirrored' else loss

    def broadcast_op(self):
        """An op copying every global variable from rank 0 (run after init or restore); None in
        one process. HCCL: the float variables in one fused call, as Huawei's hook does, each
        integer counter unfused; workers: one packed collective."""
        if self.cluster.engine == 'multiworker':
            return collectives.broadcast_from_first(self.strategy, tf.global_variables(),
                                                    self.cluster.rank)
        if self.cluster.engine != 'hccl':
            return None
        hccl_ops = importlib.import_module('npu_bridge.hccl.hccl_ops')
        variables = tf.global_variables()
        floats = [v for v in variables if v.dtype.base_dtype.is_floating]
        calls = [(floats, 2)] if floats else []
        calls += [([v], 0) for v in variables if not v.dtype.base_dtype.is_floating]
        assigns = []
        for group, fusion in calls:
            values = hccl_ops.broadcast([tf.identity(v) for v in group], 0, fusion=fusion)
            assigns += [tf.assign(v, value) for v, value in zip(group, values)]
        return tf.group(*assigns)

    def leave(self, timeout_s=60.):
        """After the barrier, the chief leaves last: it waits until the other workers' servers
        are gone, since a worker closing its session still talks to the chief's."""
        if self.cluster.engine != 'multiworker' or not self.chief:
            return
        others = _tf_config_cluster()['worker'][1:]
        deadline = time.time() + timeout_s
        while time.time() < deadline and any(_listening(address) for address in others):
            time.sleep(0.2)

    def worker_mean_op(self, value):
        """Multi-worker: `value` (a float32 vector) averaged over the workers, one collective;
        None for the other engines (HCCL ranks take rank 0's variables; one process agrees)."""
        if self.cluster.engine != 'multiworker':
            return None
        return self.mean_over_workers([value])[0]

    def barrier_op(self):
        """An op every rank runs before leaving, so none exits while another still needs it."""
        if self.cluster.engine == 'hccl':
            hccl_ops = importlib.import_module('npu_bridge.hccl.hccl_ops')
            return hccl_ops.allreduce(tf.constant(1.), 'sum').op
        if self.strategy is not None:
            return collectives.strategy_sum(self.strategy, tf.constant(1.)).op
        return tf.no_op()

    def wrap_optimizer(self, optimizer):
        """`optimizer` with loss scaling where float16 needs it; unchanged otherwise.

        Build the step with the returned optimizer's minimize() (or its compute_gradients()
        then apply_gradients()): those scale the loss and unscale the gradients.
        """
        if self.cluster.engine == 'hccl':  # allreduce-averages the gradients over the ranks
            distributed = importlib.import_module('npu_bridge.estimator.npu.npu_optimizer')
            optimizer = distributed.NPUDistributedOptimizer(optimizer)
        if not self.loss_scaling:
            return optimizer
        if self.name == 'npu':
            return _npu_loss_scale_optimizer(optimizer, self.cluster.engine == 'hccl')
        return tf.train.experimental.MixedPrecisionLossScaleOptimizer(
            optimizer, tf.train.experimental.DynamicLossScale())

    def describe(self):
        """One line for the logs, e.g. 'device=cpu precision=mixed (bfloat16 via oneDNN)'."""
        text = 'device=%s precision=%s' % (self.name, self.precision)
        if self.precision != self.effective_precision:
            text += ' (running fp32: no bfloat16 support here)'
        else:
            text += ' (%s)' % _PRECISION_NOTE[(self.name, self.effective_precision)]
        if self.cluster.replicas > 1:
            text += '; %s, %d replicas, rank %d of %d' % (
                self.cluster.engine, self.cluster.replicas, self.cluster.rank, self.cluster.workers)
        return text


def _batch_sum(strategy, per_replica):
    """merge_call's function: a per-replica tensor summed over the replicas, on each of them."""
    return strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM,
                                             [(per_replica, per_replica)])[0]


def _tf_config_cluster():
    """The cluster of this multi-worker process's TF_CONFIG (checked by cluster_from_env)."""
    return json.loads(os.environ['TF_CONFIG'])['cluster']


def _listening(address):
    """Whether something accepts TCP connections at host:port."""
    host, port = address.rsplit(':', 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.).close()
        return True
    except (OSError, ValueError):
        return False


def _npu_optimizer(config):
    """The NpuOptimizer entry of a session config made by _configure_npu."""
    for optimizer in config.graph_options.rewrite_options.custom_optimizers:
        if optimizer.name == 'NpuOptimizer':
            return optimizer
    raise ValueError('no NpuOptimizer in the session config')


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


def _npu_loss_scale_optimizer(optimizer, distributed):
    """NPULossScaleOptimizer with the exponential manager the Ascend ModelZoo uses; across ranks,
    around an NPUDistributedOptimizer (gradient allreduce) with the overflow status summed.

    From 2^32 the scale halves every second overflowing step; on each of those steps the
    adapter skips the inner (Adam) update and the rest of our step still runs (docs/npu.md).
    """
    lso = importlib.import_module('npu_bridge.estimator.npu.npu_loss_scale_optimizer')
    lsm = importlib.import_module('npu_bridge.estimator.npu.npu_loss_scale_manager')
    manager = lsm.ExponentialUpdateLossScaleManager(
        init_loss_scale=2 ** 32, incr_every_n_steps=1000, decr_every_n_nan_or_inf=2,
        decr_ratio=0.5)
    return lso.NPULossScaleOptimizer(optimizer, manager, is_distributed=distributed)
