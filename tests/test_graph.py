"""libml/graph.py: the real training graph of every method and device/precision setting, audited and runnable."""

import types

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import methods
import tiny_data
from libml import data, graph_audit, npu_config
from libml.graph import build_graph, saved_variables, training_update
from libml.train import input_pipelines

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
        pipelines = input_pipelines(dataset, hp, device, methods.get('realmix'))
        ops = build_graph(hp, dataset.shape, dataset.nclass, device, methods.get(hp['method']),
                          pipelines=pipelines)
        problems = graph_audit.audit_train_graph(graph, ops['train_op'],
                                                 expect_loss_scale=device.loss_scaling)
        assert problems == []
        assert device.loss_scaling == (precision == 'mixed' and device_name != 'cpu')
        assert not [op for op in graph.get_operations() if op.type in ('PyFunc', 'EagerPyFunc')]
        # Session config of a GPU/NPU is built but the steps run on this CPU.
        config = device.session_config() if device_name == 'cpu' else None
        if device_name == 'npu':
            from npu_bridge import fake_checks
            fake_checks.validate_session_config(device.session_config(), graph)
        with tf.Session(config=config) as session:
            session.run(tf.global_variables_initializer())
            for _ in range(2):
                losses = session.run(ops['losses'])  # runs a step, like ops['train_op']
            step = session.run(ops['step'])
    assert step == 2 * hp['batch']
    assert all(np.isfinite(v) for v in losses.values())
    assert 0 < losses['mask_ratio'] <= 0.75 + 1e-6  # percent_mask 0.25 drops a quarter or more


@pytest.mark.parametrize('method', ['mixmatch', 'pi_model', 'mean_teacher', 'ict', 'vat',
                                    'pseudo_label', 'mixup', 'fixmatch'])
def test_every_semi_supervised_method_builds_a_clean_graph_and_trains(dataset, method):
    """Both legs (the step-equality with the reference's code is TF 1.15 only)."""
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    hp = dict(hyper_parameters(dataset, method=method), train_kimg=4)
    hp.update((spec.name, spec.default) for spec in methods.get(method).FLAGS)
    with tf.Graph().as_default() as graph:
        pipelines = input_pipelines(dataset, hp, device, methods.get(method))
        ops = build_graph(hp, dataset.shape, dataset.nclass, device, methods.get(method),
                          pipelines=pipelines)
        assert graph_audit.audit_train_graph(graph, ops['train_op']) == []
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            losses = session.run(ops['losses'])
    assert all(np.isfinite(v) for v in losses.values()) and losses['loss'] > 0


def _counting_method():
    """A supervised method that keeps state of its own: the steps it took and the images seen."""
    def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
        steps = methods.state_variable('steps', [], tf.int32, tf.zeros_initializer())
        logits = classify(labeled_batch['image'], training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labeled_batch['label'], logits=logits))
        steps_before = tf.cast(steps, tf.float32)
        with tf.control_dependencies([steps_before]):  # the method orders its reads and updates
            update = tf.assign_add(steps, 1)
        return dict(loss=loss, xe=loss, steps=steps_before, state_update=update)
    return types.SimpleNamespace(NAME='counting', NEEDS_UNLABELED=False, FLAGS=[], losses=losses)


def test_a_methods_own_state_lives_across_steps_and_checkpoints(dataset, tmp_path):
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    hp = hyper_parameters(dataset, method='counting')
    method = _counting_method()
    prefix = str(tmp_path / 'model.ckpt')
    for resumed in (False, True):
        with tf.Graph().as_default():
            ops = build_graph(hp, dataset.shape, dataset.nclass, device, method,
                              pipelines=input_pipelines(dataset, hp, device, method))
            saver = tf.train.Saver(saved_variables())
            with tf.Session() as session:
                session.run(tf.global_variables_initializer())
                if resumed:
                    saver.restore(session, prefix)
                seen = [session.run(ops['losses'])['steps'] for _ in range(3)]
                saver.save(session, prefix, write_meta_graph=False)
        assert seen == ([3., 4., 5.] if resumed else [0., 1., 2.])
    assert 'method_state/steps' in dict(tf.train.list_variables(prefix))


@pytest.mark.parametrize('method', ['supervised', 'fs_baseline', 'fs_mixup'])
def test_labeled_only_baselines_build_a_clean_graph(dataset, method):
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    hp = dict(hyper_parameters(dataset, method=method), smoothing=0.001)
    with tf.Graph().as_default() as graph:
        labeled = data.batches(data.labeled_pipeline(dataset, hp['batch'], hp['augment']))
        ops = build_graph(hp, dataset.shape, dataset.nclass, device, methods.get(hp['method']),
                          pipelines=[(labeled, None)])
        assert graph_audit.audit_train_graph(graph, ops['train_op']) == []
        assert set(ops['losses']) == {'loss', 'xe'}


def _state(session, groups):
    """Values of every variable in `groups` (a dict of lists of variables)."""
    return {name: session.run(variables) for name, variables in groups.items()}


def test_npu_mixed_skips_adam_on_overflow_but_the_rest_of_the_step_runs(dataset, fake_npu):
    """Under the fake adapter, from the 2^32 starting scale: every overflowing step skips Adam
    (weights, slots, beta powers) while the loss scale halves every second step; weight decay,
    batch-norm statistics, EMA and the image counter run on every step (docs/npu.md says why);
    once the scale fits float16, Adam applies."""
    from npu_bridge import fake_checks
    device = npu_config.setup('npu', 'mixed', log=lambda *a: None)
    # No TSA: at step 0 it can mask every labeled example, and a zero gradient never overflows.
    hp = dict(hyper_parameters(dataset), tsa='none')
    decay = 1 - hp['wd'] * hp['lr']
    with tf.Graph().as_default() as graph:
        pipelines = input_pipelines(dataset, hp, device, methods.get('realmix'))
        ops = build_graph(hp, dataset.shape, dataset.nclass, device, methods.get(hp['method']),
                          pipelines=pipelines)
        fake_checks.validate_session_config(device.session_config(), graph)
        named = {v.op.name: v for v in tf.global_variables()}
        trainable = tf.trainable_variables('classify')
        kernels = [v for v in trainable if v.op.name.endswith('/kernel')]
        groups = dict(
            kernels=kernels,
            other_weights=[v for v in trainable if v not in kernels],
            # Adam's slots, then its beta powers: created inside the loss-scale optimizer's
            # tf.cond they are named 'cond/beta1_power', not 'beta1_power' (GPU's loss scaling
            # gives 'cond_1/beta1_power').
            adam=[v for n, v in named.items() if n.endswith(('/Adam', '/Adam_1'))]
            + [v for n, v in sorted(named.items()) if n.endswith(('beta1_power', 'beta2_power'))],
            bn=[v for n, v in named.items() if n.endswith(('moving_mean', 'moving_variance'))],
            shadows=[named[v.op.name + '/ExponentialMovingAverage'] for v in trainable],
            trainable=trainable,
            scale=[named['loss_scale'], named['good_steps'], named['bad_steps']],
            step=[ops['step']])
        assert groups['bn'] and groups['other_weights'] and len(groups['adam']) > 2
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            skipped = 0
            while True:
                before = _state(session, groups)
                _, losses = session.run([ops['train_op'], ops['losses']])
                after = _state(session, groups)
                assert np.isfinite(losses['loss'])
                assert after['step'][0] == before['step'][0] + hp['batch']  # counter: always
                assert all(not np.array_equal(a, b) for a, b in zip(after['bn'], before['bn']))
                for shadow, old, weight in zip(after['shadows'], before['shadows'],
                                               after['trainable']):
                    np.testing.assert_allclose(shadow, hp['ema'] * old + (1 - hp['ema']) * weight,
                                               rtol=1e-5, atol=1e-7)
                scale, good, bad = before['scale']
                applied = after['adam'][-1] != before['adam'][-1]  # beta2_power moved
                if applied:
                    break
                skipped += 1
                for a, b in zip(after['adam'] + after['other_weights'],
                                before['adam'] + before['other_weights']):
                    np.testing.assert_array_equal(a, b)  # Adam skipped
                for a, b in zip(after['kernels'], before['kernels']):
                    np.testing.assert_allclose(a, b * decay, rtol=1e-6)  # weight decay ran
                    assert not np.array_equal(a, b)
                assert after['scale'] == ([scale / 2, 0, 0] if bad == 1 else [scale, 0, bad + 1])
                assert skipped < 80, 'the loss scale never got small enough'
    assert (scale, good, bad) == (2.0 ** (32 - skipped // 2), 0, skipped % 2)
    assert skipped >= 16  # at 2^24 any gradient above 65504 / 2^24 = 0.004 still overflows
    assert after['scale'] == [scale, 1, bad]  # finite step: one good step; bad steps stay
    for a, b in zip(after['other_weights'], before['other_weights']):
        assert not np.array_equal(a, b)  # Adam moved the biases and batch-norm gains
    moved = [np.abs(a - b * decay).max() for a, b in zip(after['kernels'], before['kernels'])]
    assert min(moved) > 1e-4  # lr 0.002: Adam's first step moves each weight by about lr


@pytest.fixture
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


@pytest.mark.usefixtures('fresh_graph')
def test_weight_decay_then_ema_after_each_adam_step():
    lr, wd, decay = 0.1, 0.5, 0.9
    with tf.variable_scope('classify'):
        kernel = tf.get_variable('dense/kernel', initializer=tf.constant([[1., -2.]]))
        bias = tf.get_variable('dense/bias', initializer=tf.constant([3.]))
    loss = tf.reduce_sum(kernel) + tf.reduce_sum(bias)  # gradient 1 everywhere
    step = tf.train.get_or_create_global_step()
    hp = dict(lr=lr, wd=wd, ema=decay, batch=64)
    ema = tf.train.ExponentialMovingAverage(decay)
    train_op, _ = training_update(loss, hp, step, tf.train.AdamOptimizer(lr), ema, 64)
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        session.run(train_op)
        k, b, k_ema, b_ema, s = session.run([kernel, bias, ema.average(kernel), ema.average(bias), step])
    # Adam's first step moves each weight by lr in the direction of -sign(gradient).
    np.testing.assert_allclose(k, (np.array([[1., -2.]]) - lr) * (1 - wd * lr), rtol=1e-5)
    np.testing.assert_allclose(b, [3. - lr], rtol=1e-5)  # biases are not decayed
    np.testing.assert_allclose(k_ema, decay * np.array([[1., -2.]]) + (1 - decay) * k, rtol=1e-5)
    np.testing.assert_allclose(b_ema, decay * 3. + (1 - decay) * b, rtol=1e-5)
    assert s == 64


@pytest.mark.usefixtures('fresh_graph')
def test_ema_tracks_trainable_weights_only_not_bn_statistics_nor_optimizer_slots():
    with tf.variable_scope('classify'):
        kernel = tf.get_variable('dense/kernel', initializer=tf.constant([1., 2.]))
        tf.get_variable('bn/moving_mean', initializer=tf.constant([0.]), trainable=False)
    step = tf.train.get_or_create_global_step()
    training_update(tf.reduce_sum(kernel), dict(lr=0.1, wd=0.1), step, tf.train.AdamOptimizer(0.1),
                    tf.train.ExponentialMovingAverage(0.9), 4)
    shadows = sorted(v.op.name for v in tf.global_variables() if 'ExponentialMovingAverage' in v.op.name)
    assert shadows == ['classify/dense/kernel/ExponentialMovingAverage']
