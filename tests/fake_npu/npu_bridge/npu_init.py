"""Fake `npu_bridge.npu_init` (r1.7.0): the one import of the NPU path, re-exporting a subset
of the real names (the real one also registers the NPU ops and needs CANN's `hccl.manage.api`
and `hccl.split.api` and `tensorflow.contrib`; the fake skips contrib, gone from TF 2.x).

`npu_config_proto(config_proto=None)` is the real helper: a ConfigProto with an NpuOptimizer
entry (added when missing, nothing set in it), allow_soft_placement, no device-placement log,
grappler remapping and memory_optimization OFF, global_jit_level OFF.
"""
import os  # noqa: F401  (re-exported by the real module)

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2  # noqa: F401
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

from hccl.manage.api import (  # noqa: F401
    create_group, destroy_group, get_group_rank_from_world_rank, get_local_rank_id,
    get_local_rank_size, get_rank_id, get_rank_size, get_world_rank_from_group_rank)
from hccl.split.api import set_split_strategy_by_idx, set_split_strategy_by_size  # noqa: F401
from npu_bridge.estimator import npu_ops  # noqa: F401
from npu_bridge.estimator.npu import util  # noqa: F401
from npu_bridge.estimator.npu.npu_hook import NPUBroadcastGlobalVariablesHook  # noqa: F401
from npu_bridge.estimator.npu.npu_loss_scale_manager import (  # noqa: F401
    ExponentialUpdateLossScaleManager, FixedLossScaleManager)
from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer  # noqa: F401
from npu_bridge.estimator.npu.npu_optimizer import (  # noqa: F401
    NPUDistributedOptimizer, npu_allreduce)
from npu_bridge.hccl import hccl_ops  # noqa: F401


def npu_config_proto(config_proto=None):
    """`config_proto` (or a new ConfigProto) made ready for the NPU, as the real helper does."""
    config = config_proto if config_proto is not None else tf.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    if not any(c.name == 'NpuOptimizer' for c in rewrite.custom_optimizers):
        rewrite.custom_optimizers.add().name = 'NpuOptimizer'
    config.allow_soft_placement = True
    config.log_device_placement = False
    rewrite.remapping = RewriterConfig.OFF
    rewrite.memory_optimization = RewriterConfig.OFF
    config.graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.OFF
    return config


def npu_tf_optimizer(opt):
    """The real helper: `NPUDistributedOptimizer(opt)`."""
    return NPUDistributedOptimizer(opt)
