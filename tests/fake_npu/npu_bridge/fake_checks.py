"""Fake-only module (no such module in the real npu_bridge): what tests read about the fake.

- `RELEASE`: the TF Adapter branch the fake follows, 'r1.7.0'.
- `calls(name=None)`: the recorded calls (`Call(name, obj, args)`), optionally of one name:
  constructors ('NPULossScaleOptimizer', 'ExponentialUpdateLossScaleManager', ...) with the
  new object as `obj`, methods ('NPULossScaleOptimizer.apply_gradients', ...), functions
  ('allreduce', 'broadcast', 'initialize_system', 'set_iteration_per_loop', ...).
- `constructed(obj)`: the constructor arguments of a fake object.
- `session_config_problems(config, graph=None, release=RELEASE)` / `validate_session_config`:
  the NpuOptimizer session options checked against the adapter's documented keys (docs/npu_bridge_api.md
  section 6), stricter than the adapter, which ignores unknown keys and unchecked values.
"""
import fake_npu_state
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

RELEASE = fake_npu_state.RELEASE

# NpuOptimizer parameter keys of r1.7.0 and the AttrValue field each is read with.
_BOOL = ('use_off_line mix_compile_mode enable_data_pre_proc lower_functional_ops '
         'variable_format_optimize hcom_parallel is_tailing_optimization hcom_multi_mode '
         'enable_compress_weight dynamic_input enable_dump enable_dump_debug profiling_mode '
         'in_out_pair_flag').split()
_INT = ('graph_run_mode iterations_per_loop task_index local_rank_id session_device_id '
        'enable_small_channel dynamic_node_type enable_exception_dump op_debug_level '
        'hccl_timeout op_wait_timeout op_execute_timeout').split()
_BYTES = ('precision_mode job local_device_list device_type graph_memory_max_size '
          'variable_memory_max_size stream_max_parallel_num buffer_optimize modify_mixlist '
          'op_precision_mode op_select_implmode optypelist_for_implmode fusion_switch_file '
          'enable_scope_fusion_passes compress_weight_conf dynamic_graph_execute_mode '
          'dynamic_inputs_shape_range input_shape dynamic_dims dump_path dump_step dump_mode '
          'dump_debug_mode debug_dir profiling_options auto_tune_mode aoe_mode work_path '
          'distribute_config op_compiler_cache_mode op_compiler_cache_dir in_out_pair').split()
_R17 = dict([(k, 'b') for k in _BOOL] + [(k, 'i') for k in _INT] + [(k, 's') for k in _BYTES])
_NOT_IN_R111 = (
    'aoe_mode buffer_optimize compress_weight_conf debug_dir device_type distribute_config '
    'dynamic_dims dynamic_graph_execute_mode dynamic_input dynamic_inputs_shape_range '
    'dynamic_node_type enable_compress_weight enable_small_channel fusion_switch_file '
    'hccl_timeout hcom_multi_mode in_out_pair in_out_pair_flag input_shape local_device_list '
    'local_rank_id modify_mixlist op_compiler_cache_dir op_compiler_cache_mode '
    'op_execute_timeout op_precision_mode op_wait_timeout session_device_id work_path').split()
_R17_ONLY = ('device_type', 'hccl_timeout', 'op_wait_timeout', 'op_execute_timeout')


def _without(keys, names):
    return dict((k, t) for k, t in keys.items() if k not in names)


NPU_OPTIMIZER_KEYS = {
    'r1.1.1': dict(_without(_R17, _NOT_IN_R111), fp_point='s', bp_point='s'),
    'r1.5.0': _without(_R17, _R17_ONLY),
    'r1.6.0': _without(_R17, _R17_ONLY),
    'r1.7.0': _R17,
    'r1.8.0': dict(_R17, soc_config='s'),
}
# CANN 5.x-era values (adapter r1.1-r1.11 passes them to GE, which validates them).
PRECISION_MODES = ('force_fp32', 'force_fp16', 'allow_fp32_to_fp16', 'must_keep_origin_dtype',
                   'allow_mix_precision')
_FIELD_NAMES = {'b': 'bool (.b)', 'i': 'int (.i)', 's': 'bytes (.s)'}


def calls(name=None):
    """Recorded calls, all or those named `name`."""
    return [c for c in fake_npu_state.CALLS if name is None or c.name == name]


def constructed(obj):
    """The constructor arguments recorded for fake object `obj`."""
    found = [c.args for c in fake_npu_state.CALLS if c.obj is obj and '.' not in c.name]
    if not found:
        raise KeyError('no constructor call recorded for %r' % (obj,))
    return found[0]


def _value(param, field):
    value = getattr(param, field)
    return value.decode('utf-8', 'replace') if field == 's' else value


def session_config_problems(config, graph=None, release=RELEASE):
    """Why the adapter (or we, stricter) would refuse `config`, as strings; [] when fine.

    `graph`: the training graph; with it, a OneShotIterator op and iterations_per_loop != 1 is
    refused (the adapter's LOG(FATAL) in om_partition_subgraphs_pass.cc).
    """
    keys = NPU_OPTIMIZER_KEYS[release]
    rewrite = config.graph_options.rewrite_options
    entries = [c for c in rewrite.custom_optimizers if c.name == 'NpuOptimizer']
    if len(entries) != 1:
        return ['%d NpuOptimizer entries in rewrite_options.custom_optimizers (need exactly 1)'
                % len(entries)]
    problems = []
    if rewrite.remapping != RewriterConfig.OFF or rewrite.memory_optimization != \
            RewriterConfig.OFF:
        problems.append('grappler remapping and memory_optimization must be OFF (npu_config_proto '
                        'sets both; the migration guides require it)')
    params = entries[0].parameter_map
    values = {}
    for key in sorted(params):
        field = params[key].WhichOneof('value')
        if key not in keys:
            problems.append('unknown NpuOptimizer key %r for adapter %s (the adapter would '
                            'ignore it silently)' % (key, release))
        elif field != keys[key]:
            problems.append('NpuOptimizer key %r is read as %s, but is set as %s (it would read '
                            'as false/0/"")' % (key, _FIELD_NAMES[keys[key]], field))
        else:
            values[key] = _value(params[key], field)
    mode = values.get('precision_mode')
    if mode is None and 'precision_mode' not in params:
        problems.append('precision_mode unset: training defaults to allow_fp32_to_fp16 '
                        '(float16 convolutions and matmuls); set it explicitly')
    elif mode is not None and mode not in PRECISION_MODES:
        problems.append('precision_mode %r is not one of %s' % (mode, ', '.join(PRECISION_MODES)))
    problems += _dependency_problems(values, graph)
    return problems


def _dependency_problems(values, graph):
    problems = []
    loops = values.get('iterations_per_loop', 1)
    if loops < 1:
        problems.append('iterations_per_loop %d: must be >= 1' % loops)
    if loops != 1 and graph is not None and \
            any(op.type == 'OneShotIterator' for op in graph.get_operations()):
        problems.append('iterations_per_loop %d with a one-shot iterator in the graph (adapter '
                        'LOG(FATAL)); use an initializable iterator' % loops)
    if loops > 1 and values.get('dynamic_input'):
        problems.append('iterations_per_loop > 1 with dynamic_input (adapter LOG(FATAL))')
    if values.get('graph_run_mode', 1) not in (0, 1):
        problems.append('graph_run_mode must be 0 or 1')
    if values.get('session_device_id', 0) < 0:
        problems.append('session_device_id must be >= 0')
    if 'modify_mixlist' in values and values.get('precision_mode') != 'allow_mix_precision':
        problems.append('modify_mixlist needs precision_mode allow_mix_precision')
    if 'optypelist_for_implmode' in values and 'op_select_implmode' not in values:
        problems.append('optypelist_for_implmode needs op_select_implmode')
    if (values.get('enable_dump') or values.get('enable_dump_debug')) and \
            not values.get('dump_path'):
        problems.append('enable_dump/enable_dump_debug need dump_path')
    if values.get('profiling_mode') and not values.get('profiling_options'):
        problems.append('profiling_mode needs profiling_options')
    if values.get('enable_compress_weight') and 'compress_weight_conf' in values:
        problems.append('compress_weight_conf cannot be used with enable_compress_weight')
    dynamic = [k for k in ('input_shape', 'dynamic_dims', 'dynamic_node_type') if k in values]
    if dynamic and len(dynamic) != 3:
        problems.append('input_shape, dynamic_dims and dynamic_node_type go together')
    if 'dynamic_node_type' in values and values['dynamic_node_type'] not in (0, 1):
        problems.append('dynamic_node_type must be 0 or 1')
    return problems


def validate_session_config(config, graph=None, release=RELEASE):
    """Raise ValueError listing every problem `session_config_problems` finds."""
    problems = session_config_problems(config, graph, release)
    if problems:
        raise ValueError('NpuOptimizer session config refused:\n  ' + '\n  '.join(problems))
    return config
