"""Ascend data parallelism and loop sinking at graph level, under the fake npu_bridge: HCCL ranks
(NPUDistributedOptimizer inside NPULossScaleOptimizer(is_distributed=True), rank 0's variables
broadcast, hcom_parallel) and --iterations_per_loop (initializable zipped input, the session's
loop options, set_iteration_per_loop)."""
import importlib
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import methods
import tiny_data
from libml import data, hparams, npu_config, train
from libml.graph import build_graph
from libml.utils import UserError

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


@pytest.fixture
def two_ranks(fake_npu, monkeypatch, tmp_path):
    table = tmp_path / 'rank_table.json'
    table.write_text('{"version": "1.0"}')
    for name, value in dict(RANK_SIZE='2', RANK_ID='1', RANK_TABLE_FILE=str(table), JOB_ID='1',
                            DEVICE_ID='1').items():
        monkeypatch.setenv(name, value)
    return importlib.import_module('npu_bridge.fake_checks')


def test_hccl_ranks_average_gradients_share_rank_0_weights_and_count_global_images(dataset,
                                                                                   two_ranks):
    checks = two_ranks
    device = npu_config.setup('npu', 'mixed', log=lambda *a: None)
    assert device.cluster == ('hccl', 2, 1, 1) and not device.chief
    hp = run_hp(dataset, replicas=2)
    with tf.Graph().as_default() as graph:
        pipelines = train.input_pipelines(dataset, hp, device, needs_unlabeled=True)
        ops = build_graph(hp, dataset.shape, dataset.nclass, device, methods.get('realmix'),
                          pipelines)
        broadcast, barrier = device.broadcast_op(), device.barrier_op()
        checks.validate_session_config(device.session_config(), graph)
        [scaler] = checks.calls('NPULossScaleOptimizer')
        [distributed] = checks.calls('NPUDistributedOptimizer')
        assert scaler.args['is_distributed'] is True and scaler.args['opt'] is distributed.obj
        assert isinstance(distributed.args['optimizer'], tf.train.AdamOptimizer)
        [sent] = checks.calls('broadcast')
        assert sent.args['root_rank'] == 0 and len(sent.args['tensor']) == len(tf.global_variables())
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


def test_loop_sinking_needs_epochs_and_checkpoints_on_loop_boundaries(dataset, fake_npu):
    device = npu_config.setup('npu', 'fp32', log=lambda *a: None, iterations_per_loop=4)
    hp = run_hp(dataset, batch=12)  # 1024 images per epoch; a loop is 48
    with pytest.raises(UserError, match='--report_kimg=1 is 1024 images, not a multiple of the 48'):
        train.Trainer('unused', hp, dataset, device, methods.get('realmix'))
    with pytest.raises(UserError, match="--iterations_per_loop=4: the device loop is the NPU's"):
        npu_config.setup('cpu', 'fp32', iterations_per_loop=4)


def test_a_shard_per_replica_needs_enough_labeled_images(dataset):
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None, replicas=2)
    assert np.array(device.input_shards()).tolist() == [[0, 2], [1, 2]]
    with pytest.raises(UserError, match='12 labeled images cannot be shared out to 16 replicas'):
        data.check_shards(dataset, 16)
