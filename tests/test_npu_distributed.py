"""Ascend data parallelism and loop sinking at graph level, under the fake npu_bridge: HCCL ranks
(NPUDistributedOptimizer inside NPULossScaleOptimizer(is_distributed=True), rank 0's variables
broadcast, hcom_parallel), the HCCL environment (rank table file or folder, JOB_ID, timeouts) and
--iterations_per_loop (initializable zipped input, the session's loop options, the device loop)."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import methods
import tiny_data
from libml import data, events, hparams, npu_config, run_folder, train
from libml.graph import build_graph
from libml.utils import UserError
from conftest import ROOT

tf.disable_v2_behavior()


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    return data.resolve(tiny_data.make_ssl_dataset(root) + '-6', root=root)


def run_hp(dataset, **changes):
    """A RealMix run's hyperparameters at the flag defaults, small."""
    values = dict((spec.name, spec.default) for spec in methods.flag_specs('realmix'))
    values.update(method='realmix', replicas=1, arch='smallconv', filters=8, repeat=1, batch=8,
                  report_kimg=1, save_kimg=1, train_kimg=1, tune_kimg=0, eval_batch=16)
    values.update(changes)
    return hparams.hyper_parameters(values, dataset)


def write_rank_table(path, servers):
    """A version 1.0 rank table: `servers` lists the device ids of each server; ranks in order."""
    rank, server_list = 0, []
    for index, devices in enumerate(servers):
        entries = []
        for device in devices:
            entries.append({'device_id': str(device), 'device_ip': '192.168.%d.%d' % (index, device),
                            'rank_id': str(rank)})
            rank += 1
        server_list.append({'server_id': '10.0.0.%d' % (index + 1), 'device': entries})
    path.write_text(json.dumps({'version': '1.0', 'server_count': str(len(servers)),
                                'server_list': server_list, 'status': 'completed'}))
    return str(path)


def unset_env(monkeypatch, *names):
    """Remove `names` from the environment for one test, restored after it even if code sets them."""
    for name in names:
        monkeypatch.setenv(name, 'placeholder')
        monkeypatch.delenv(name)


@pytest.fixture
def two_ranks(fake_npu, monkeypatch, tmp_path):
    table = write_rank_table(tmp_path / 'rank_table.json', [[0, 1]])
    for name, value in dict(RANK_SIZE='2', RANK_ID='1', RANK_TABLE_FILE=table, JOB_ID='1',
                            DEVICE_ID='1').items():
        monkeypatch.setenv(name, value)
    unset_env(monkeypatch, 'HCCL_EXEC_TIMEOUT', 'HCCL_CONNECT_TIMEOUT')
    return importlib.import_module('npu_bridge.fake_checks')


def test_hccl_ranks_average_gradients_share_rank_0_weights_and_count_global_images(dataset,
                                                                                   two_ranks):
    checks = two_ranks
    device = npu_config.setup('npu', 'mixed', log=lambda *a: None)
    assert device.cluster == ('hccl', 2, 1, 1) and not device.chief
    hp = run_hp(dataset, replicas=2)
    with tf.Graph().as_default() as graph:
        pipelines = train.input_pipelines(dataset, hp, device, methods.get('realmix'))
        ops = build_graph(hp, dataset.shape, dataset.nclass, device, methods.get('realmix'),
                          pipelines)
        broadcast, barrier = device.broadcast_op(), device.barrier_op()
        checks.validate_session_config(device.session_config(), graph)
        [scaler] = checks.calls('NPULossScaleOptimizer')
        [distributed] = checks.calls('NPUDistributedOptimizer')
        assert scaler.args['is_distributed'] is True and scaler.args['opt'] is distributed.obj
        assert isinstance(distributed.args['optimizer'], tf.train.AdamOptimizer)
        sent = checks.calls('broadcast')
        assert all(c.args['root_rank'] == 0 for c in sent)
        floats = [v for v in tf.global_variables() if v.dtype.base_dtype.is_floating]
        integers = [v for v in tf.global_variables() if v.dtype.base_dtype.is_integer]
        assert floats and integers and len(floats) + len(integers) == len(tf.global_variables())
        # One fused call of every float variable, then each integer counter on its own, unfused.
        assert len(sent[0].args['tensor']) == len(floats) and sent[0].args['fusion'] == 2
        assert [(len(c.args['tensor']), c.args['fusion']) for c in sent[1:]] == \
            [(1, 0)] * len(integers)
        gradients = [c for c in checks.calls('allreduce') if c.args['reduction'] == 'sum']
        assert len(gradients) >= len(tf.trainable_variables())  # + the overflow status, barrier
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            session.run(broadcast)
            session.run(ops['train_op'])
            session.run(barrier)
            assert session.run(ops['step']) == 2 * hp['batch']  # both ranks' images
    options = device.session_config().graph_options.rewrite_options.custom_optimizers[0]
    assert options.parameter_map['hcom_parallel'].b


def test_an_hccl_job_gets_a_default_job_id_and_generous_hccl_timeouts(dataset, two_ranks,
                                                                    monkeypatch):
    unset_env(monkeypatch, 'JOB_ID')
    monkeypatch.setenv('HCCL_CONNECT_TIMEOUT', '300')  # what the job sets is kept
    device = npu_config.setup('npu', 'fp32', log=lambda *a: None)
    assert os.environ['JOB_ID'] == npu_config.DEFAULT_JOB_ID == '10385'
    assert os.environ['HCCL_EXEC_TIMEOUT'] == '7140' and os.environ['HCCL_CONNECT_TIMEOUT'] == '300'
    assert int(os.environ['HCCL_EXEC_TIMEOUT']) % 68 == 0  # 910: the timeout is taken // 68 * 68
    with tf.Graph().as_default():  # the adapter's allreduce reads JOB_ID: no traceback now
        pipelines = train.input_pipelines(dataset, run_hp(dataset), device, methods.get('realmix'))
        build_graph(run_hp(dataset), dataset.shape, dataset.nclass, device,
                    methods.get('realmix'), pipelines)


def test_rank_table_file_may_be_the_folder_holding_the_table(two_ranks, monkeypatch, tmp_path):
    folder = tmp_path / 'config'
    folder.mkdir()
    (folder / 'jobstart_hccl.json').write_text(json.dumps({'status': 'completed', 'group_list': [
        {'instance_list': [{'server_id': '10.0.0.1', 'rank_id': str(r),
                            'devices': [{'device_id': str(r), 'device_ip': '1.1.1.%d' % r}]}
                           for r in range(2)]}]}))  # the older layout ModelArts writes
    monkeypatch.setenv('RANK_TABLE_FILE', str(folder))
    assert npu_config.setup('npu', 'fp32', log=lambda *a: None).cluster == ('hccl', 2, 1, 1)


@pytest.mark.parametrize('case, words', [
    ('empty folder', ['RANK_TABLE_FILE', 'holds no rank table']),
    ('missing', ['RANK_TABLE_FILE', 'no such file']),
    ('not a table', ['rank table', 'no server_list']),
    ('other size', ['lists 4 ranks', 'RANK_SIZE=2']),
])
def test_a_bad_rank_table_is_one_line(two_ranks, monkeypatch, tmp_path, case, words):
    path = tmp_path / 'bad'
    if case == 'empty folder':
        path.mkdir()
    elif case == 'not a table':
        path.write_text('{"version": "1.0"}')
    elif case == 'other size':
        write_rank_table(path, [[0, 1, 2, 3]])
    monkeypatch.setenv('RANK_TABLE_FILE', str(path))
    with pytest.raises(UserError) as info:
        npu_config.setup('npu', 'fp32', log=lambda *a: None)
    assert '\n' not in str(info.value) and all(w in str(info.value) for w in words), str(info.value)


def test_loop_sinking_trains_from_one_initializable_zipped_iterator(dataset, fake_npu, tmp_path):
    checks = importlib.import_module('npu_bridge.fake_checks')
    device = npu_config.setup('npu', 'fp32', log=lambda *a: None, iterations_per_loop=4)
    hp = run_hp(dataset)
    trainer = train.Trainer(str(tmp_path / 'run'), hp, dataset, device, methods.get('realmix'))
    kinds = [op.type for op in trainer.graph.get_operations()]
    assert 'OneShotIterator' not in kinds and kinds.count('MakeIterator') == 1  # zipped: one
    config = device.session_config()
    checks.validate_session_config(config, trainer.graph)
    parameters = config.graph_options.rewrite_options.custom_optimizers[0].parameter_map
    assert parameters['iterations_per_loop'].i == 4 and parameters['enable_data_pre_proc'].b
    assert not parameters['mix_compile_mode'].b
    trainer.train()
    [loop] = checks.calls('set_iteration_per_loop')
    assert loop.args['iterations_per_loop'] == 4
    assert os.path.isfile(str(tmp_path / 'run' / 'result.txt'))
    # The fake loops 4 steps per session.run: each checkpoint holds the step of its name.
    state = tf.train.get_checkpoint_state(str(tmp_path / 'run' / 'tf'))
    for path in state.all_model_checkpoint_paths:
        saved = tf.train.load_variable(os.path.join(str(tmp_path / 'run' / 'tf'), path),
                                       'global_step')
        assert saved == int(path.rsplit('-', 1)[1]), path
    assert saved == hp['total_nimg'] and saved % (4 * hp['batch']) == 0


def test_loop_sinking_counts_images_per_call_and_writes_loss_summaries_every_epoch(
        dataset, fake_npu, tmp_path):
    """32 steps of 8 images per session.run: 4 calls an epoch. Counting calls as single steps
    wrote a loss summary every 8 calls, none in the first epoch."""
    device = npu_config.setup('npu', 'fp32', log=lambda *a: None, iterations_per_loop=32)
    hp = run_hp(dataset, train_kimg=2, save_kimg=2)
    train.Trainer(str(tmp_path / 'run'), hp, dataset, device, methods.get('realmix')).train()
    curve = events.read_scalars(str(tmp_path / 'run'))['losses/loss']
    assert [step for step, _ in curve] == [256, 512, 768, 1024, 1280, 1536, 1792, 2048]
    assert [int(tf.train.load_variable(path, 'global_step')) for path in
            run_folder.checkpoints_newest_first(str(tmp_path / 'run' / 'tf'))] == [2048, 1024]


def test_loop_sinking_needs_epochs_and_checkpoints_on_loop_boundaries(dataset, fake_npu):
    device = npu_config.setup('npu', 'fp32', log=lambda *a: None, iterations_per_loop=4)
    hp = run_hp(dataset, batch=12)  # 1024 images per epoch; a loop is 48
    with pytest.raises(UserError, match='--report_kimg=1 is 1024 images, not a multiple of the 48'):
        train.Trainer('unused', hp, dataset, device, methods.get('realmix'))
    hp = run_hp(dataset, batch=12, report_kimg=3, save_kimg=3, train_kimg=4)  # 4096 images
    with pytest.raises(UserError, match="total .* is 4096 images, not a multiple of the 48"):
        train.Trainer('unused', hp, dataset, device, methods.get('realmix'))
    with pytest.raises(UserError, match="--iterations_per_loop=4: the device loop is the NPU's"):
        npu_config.setup('cpu', 'fp32', iterations_per_loop=4)


def test_a_shard_per_replica_needs_enough_labeled_images(dataset):
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None, replicas=2)
    assert np.array(device.input_shards()).tolist() == [[0, 2], [1, 2]]
    with pytest.raises(UserError, match='12 labeled images cannot be shared out to 16 replicas'):
        data.check_shards(dataset, 16)


def test_a_simulated_two_process_hccl_job_ends_with_equal_weights_and_named_checkpoints(tmp_path):
    """tests/simulate_hccl_job.py with 2 workers (8 by hand: docs/many_devices.md): launcher,
    rank table, loop sinking, collectives really exchanged between the processes."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'simulate_hccl_job.py'),
                           '--workers=2', '--keep=' + str(tmp_path / 'sim')],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)
    assert proc.returncode == 0 and 'SIMULATION_OK 2 workers' in proc.stdout, proc.stdout[-3000:]
    assert len(os.listdir(str(tmp_path / 'sim' / 'hccl' / 'variables'))) == 2
