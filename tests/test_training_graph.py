"""The real RealMix training graph under every device/precision setting: audited and runnable."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import realmix
import tiny_data
from libml import data, graph_audit, npu_config

tf.disable_v2_behavior()

SETTINGS = [('cpu', 'fp32'), ('cpu', 'mixed'), ('gpu', 'fp32'), ('gpu', 'mixed'),
            ('npu', 'fp32'), ('npu', 'mixed')]


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    return data.resolve(tiny_data.make_ssl_dataset(root) + '-6', root=root)


def hyper_parameters(dataset, method='realmix'):
    hp = dict(method=method, arch='smallconv', filters=8, repeat=1, scales=1, batch=8, lr=0.002,
              wd=0.02, ema=0.999, beta=0.75, w_match=75., warmup_kimg=1., T=0.5,
              tsa='linear_schedule', percent_mask=0.25, eval_batch=16, total_nimg=4096,
              augment='cifar10')
    return hp


@pytest.mark.parametrize('device_name,precision', SETTINGS)
def test_training_graph_is_clean_and_trains(dataset, device_name, precision, request):
    if device_name == 'npu':
        request.getfixturevalue('fake_npu')
    device = npu_config.setup(device_name, precision, log=lambda *a: None)
    hp = hyper_parameters(dataset)
    with tf.Graph().as_default() as graph:
        pipelines = (data.batches(data.labeled_pipeline(dataset, hp['batch'], hp['augment'])),
                     data.batches(data.unlabeled_pipeline(dataset, hp['batch'], hp['augment'])))
        ops = realmix.build_graph(hp, dataset.shape, dataset.nclass, device, pipelines=pipelines)
        problems = graph_audit.audit_train_graph(graph, ops['train_op'],
                                                 expect_loss_scale=device.loss_scaling)
        assert problems == []
        assert device.loss_scaling == (precision == 'mixed' and device_name != 'cpu')
        assert not [op for op in graph.get_operations() if op.type in ('PyFunc', 'EagerPyFunc')]
        # Session config of a GPU/NPU is built but the steps run on this CPU.
        config = device.session_config() if device_name == 'cpu' else None
        with tf.Session(config=config) as session:
            session.run(tf.global_variables_initializer())
            for _ in range(2):
                session.run(ops['train_op'])
            losses, step = session.run([ops['losses'], ops['step']])
    assert step == 2 * hp['batch']
    assert all(np.isfinite(v) for v in losses.values())
    assert 0 < losses['mask_ratio'] <= 0.75 + 1e-6  # percent_mask 0.25 drops a quarter or more


def test_supervised_baseline_graph_is_clean(dataset):
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    hp = hyper_parameters(dataset, method='supervised')
    with tf.Graph().as_default() as graph:
        labeled = data.batches(data.labeled_pipeline(dataset, hp['batch'], hp['augment']))
        ops = realmix.build_graph(hp, dataset.shape, dataset.nclass, device, pipelines=(labeled, None))
        assert graph_audit.audit_train_graph(graph, ops['train_op']) == []
        assert set(ops['losses']) == {'loss', 'xe'}
