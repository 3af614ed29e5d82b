"""FlexMatch and FreeMatch (methods/flexmatch.py, methods/freematch.py): one step on the
hand-worked cases of tests/usb_cases.py (USB's code, file and function named there), on one
replica and on two (the same state on both); then realmix.py end to end, killed with SIGKILL and
resumed with its state."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import methods
import tiny_data
import usb_cases as cases
from conftest import finish, kill_at_first_checkpoint, realmix, run_dir_of
from test_distributed import ENV, LAUNCH, WORKER
from libml import events, npu_config
from methods import flexmatch, freematch

tf.disable_v2_behavior()

HP = dict(wu=1., wd=0.0005, lr=0.03, train_kimg=1, confidence=cases.TAU)


def _inputs(case, rows):
    """(labeled batch, unlabeled batch) whose images are the logits a fake network passes on."""
    labeled = dict(image=np.log(cases.LABELED['probs'], dtype=np.float32)[:, None, None, :],
                   label=np.array(cases.LABELED['label'], np.int64))
    views = np.log(np.stack([case['weak'], case['strong']], 1), dtype=np.float32)[rows]
    index = np.array(case.get('index', range(len(case['weak']))), np.int64)[rows]
    return tuple(dict((k, tf.constant(v)) for k, v in d.items())
                 for d in (labeled, dict(image=views[:, :, None, None, :], index=index)))


def one_step(method, case, hp, replicas=1, state=None):
    """(logged scalars, {state variable: its value on each replica}) after one step of `method`
    on `case`; `state` {name: value} sets the state before the step."""
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None, replicas=replicas)
    with tf.Graph().as_default() as graph:
        with device.scope():
            kernel = tf.get_variable('classify/kernel', [], initializer=tf.ones_initializer())

            def step(inputs):
                losses = methods.losses(
                    method, inputs[0], inputs[1],
                    lambda x, training: tf.reshape(x, [-1, cases.NCLASS]) * kernel,
                    dict(hp, nclass=cases.NCLASS), tf.constant(0), cases.NCLASS,
                    device.sum_over_replicas)
                with tf.control_dependencies([losses.pop('state_update')]):
                    return dict((k, tf.identity(v)) for k, v in losses.items())

            rows = np.array_split(np.arange(len(case['weak'])), replicas)
            scalars = device.replicate(step, [_inputs(case, r) for r in rows])
        state_vars = [v for v in tf.global_variables() if v.op.name.startswith('method_state/')]
        given = [tf.assign(v, state[_name(v)]) for v in state_vars if _name(v) in (state or {})]
        with device.session(graph) as session:
            session.run(tf.global_variables_initializer())
            session.run(given)
            scalars = session.run(scalars)
            copies = dict((_name(v), session.run(_copies(device, v))) for v in state_vars)
    return scalars, copies


def _name(variable):
    return variable.op.name.split('/')[1]


def _copies(device, variable):
    if device.strategy is None:
        return [variable]
    return list(device.strategy.experimental_local_results(variable))


def flex_step(warmup=True, replicas=1):
    case = cases.FLEX
    hp = dict(HP, thresh_warmup=warmup, unlabeled_size=len(case['status']))
    return one_step(flexmatch, case, hp, replicas,
                    state=dict(selected_label=case['status'], classwise_acc=case['beta']))


@pytest.mark.parametrize('replicas', [1, 2])
def test_flexmatch_masks_with_the_previous_effects_then_updates_status_and_effects(replicas):
    """USB flexmatch/utils.py FlexMatchThresholdingHook.masking (mask, then selected_label),
    .update (classwise_acc), flexmatch.py FlexMatch.train_step (masked CE)."""
    case = cases.FLEX
    scalars, state = flex_step(replicas=replicas)
    assert len(state['selected_label']) == replicas  # every replica's copy, all alike
    for status in state['selected_label']:
        np.testing.assert_array_equal(status, case['new_status'])
    for beta in state['classwise_acc']:
        np.testing.assert_allclose(beta, case['new_beta'][True], rtol=1e-6)
    np.testing.assert_allclose(scalars['mask'], np.mean(case['mask']), rtol=1e-6)
    np.testing.assert_allclose(scalars['xeu'], case['xeu'], rtol=1e-5)
    np.testing.assert_allclose(scalars['loss'], np.log(2) + case['xeu'] + HP['wd'] * 0.5,
                               rtol=1e-5)
    np.testing.assert_allclose(scalars['beta'], np.mean(case['beta']), rtol=1e-6)  # read before
    np.testing.assert_allclose(scalars['unused'], 6 / 12.)


def test_flexmatch_without_warm_up_divides_by_the_largest_class():
    _, state = flex_step(warmup=False)
    np.testing.assert_allclose(state['classwise_acc'][0], cases.FLEX['new_beta'][False], rtol=1e-6)


def test_flexmatch_keeps_its_effects_while_one_status_holds_every_image():
    """USB's `if max(pseudo_counter.values()) < self.ulb_dest_len`: nothing selected yet."""
    case = dict(cases.FLEX, weak=[[0.5, 0.3, 0.2]] * 4)
    hp = dict(HP, thresh_warmup=True, unlabeled_size=12)
    _, state = one_step(flexmatch, case, hp, state=dict(selected_label=[-1] * 12,
                                                        classwise_acc=[0.5, 0.25, 0.]))
    np.testing.assert_allclose(state['classwise_acc'][0], [0.5, 0.25, 0.])


def test_flexmatch_status_of_an_image_twice_in_a_batch_is_its_last_selection():
    case = dict(cases.FLEX, index=[5, 1, 5, 3], weak=[[0.96, 0.02, 0.02], [0.4, 0.3, 0.3],
                                                      [0.01, 0.98, 0.01], [0.3, 0.3, 0.4]])
    _, state = one_step(flexmatch, case, dict(HP, thresh_warmup=True, unlabeled_size=12),
                        state=dict(selected_label=cases.FLEX['status']))
    assert state['selected_label'][0][5] == 1 and state['selected_label'][0][1] == 0


@pytest.mark.parametrize('replicas', [1, 2])
def test_freematch_updates_its_thresholds_then_masks_and_adds_the_fairness_term(replicas):
    """USB freematch/utils.py FreeMatchThresholingHook.update then .masking; freematch.py
    entropy_loss and FreeMatch.train_step (total = L_x + wu L_u + wf L_f)."""
    case = cases.FREE
    hp = dict(HP, ema_p=case['momentum'], wf=0.5)
    scalars, state = one_step(freematch, case, hp, replicas)
    for name in ('time_p', 'p_model', 'label_hist'):
        assert len(state[name]) == replicas
        for value in state[name]:
            np.testing.assert_allclose(value, case[{'time_p': 'tau'}.get(name, name)], rtol=1e-6)
    np.testing.assert_allclose(scalars['mask'], np.mean(case['mask']), rtol=1e-6)
    np.testing.assert_allclose(scalars['xeu'], case['xeu'], rtol=1e-5)
    if replicas == 1:  # two replicas log the mean of their halves' terms
        np.testing.assert_allclose(scalars['fairness'], case['fairness'], rtol=1e-5)
        np.testing.assert_allclose(scalars['loss'], np.log(2) + case['xeu'] + 0.5 * case['fairness']
                                   + HP['wd'] * 0.5, rtol=1e-5)


def test_freematch_fairness_is_zero_with_finite_gradients_when_nothing_is_masked():
    logits = tf.constant(np.log(cases.FREE['strong']), tf.float32)
    uniform = tf.fill([3], 1 / 3.)
    loss = freematch.fairness(logits, tf.zeros([4]), uniform, uniform)
    with tf.Session() as session:
        value, gradient = session.run([loss, tf.gradients(loss, logits)[0]])
    assert value == 0 and np.all(np.isfinite(gradient))


def test_two_workers_keep_the_same_freematch_state_and_weights(tmp_path):
    """scripts/launch.py with two worker processes (MultiWorkerMirroredStrategy): the batch sums
    cross the workers in their own collective, before the gradients' one."""
    root = str(tmp_path / 'data')
    tiny_data.make_ssl_dataset(root, labeled=16, unlabeled=32)
    out = str(tmp_path / 'run')
    process = subprocess.run(
        [sys.executable, LAUNCH, '--workers=2', '--log_dir=' + out + '-logs', WORKER, out, root,
         'tiny.1@16-0', 'freematch', 'smallconv', '8', '3', '1', 'none'],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        timeout=300)
    assert process.returncode == 0, process.stdout
    ranks = [np.load('%s-%d.npz' % (out, rank)) for rank in (0, 1)]
    assert all(np.array_equal(ranks[0][name], ranks[1][name]) for name in ranks[0].files)
    assert abs(ranks[0]['method_state/time_p'] - 1 / 3.) > 1e-6  # it moved
    with open(out + '-0.json') as f:
        collectives = json.load(f)['collectives']
    assert [c['size'] for c in collectives][0] == 1 + 3 + 3 + 1 and len(collectives) == 2


TINY = ['--arch=smallconv', '--filters=8', '--batch=8', '--uratio=2', '--report_kimg=1',
        '--save_kimg=1', '--tune_kimg=0', '--eval_batch=16', '--device=cpu', '--seed=1',
        '--ema=0.9', '--train_kimg=2']


def killed_and_resumed(tmp_path_factory, method, *flags):
    """(killed checkpoint's state, final checkpoint's state, logged scalars) of a `method` run
    killed with SIGKILL at its first checkpoint, then resumed to the end."""
    root = str(tmp_path_factory.mktemp('data'))
    train_dir = str(tmp_path_factory.mktemp('runs'))
    args = ['--dataset=%s-12' % tiny_data.make_ssl_dataset(root, colors=3),
            '--train_dir=' + train_dir, '--method=' + method] + TINY + list(flags)
    kill_at_first_checkpoint(args, root, train_dir)
    killed = _state(glob.glob(os.path.join(train_dir, '*', '*', 'tf'))[0])
    code, output = finish(realmix(args, root), timeout=400)
    assert code == 0 and 'Resumed from' in output, output
    run_dir = run_dir_of(train_dir)
    return killed, _state(os.path.join(run_dir, 'tf')), events.read_scalars(run_dir)


def _state(folder):
    path = tf.train.latest_checkpoint(folder)
    state = dict((name.split('/')[1], tf.train.load_variable(path, name))
                 for name, _ in tf.train.list_variables(path) if name.startswith('method_state/'))
    return dict(state, global_step=tf.train.load_variable(path, 'global_step'))


def _after(scalars, tag, step):
    return [value for at, value in scalars['losses/' + tag] if at > step]


def test_flexmatch_resumes_its_status_after_sigkill(tmp_path_factory):
    """A status never returns to -1: after a resume with the killed run's status the unused
    share stays at or below the killed checkpoint's; restarted from -1 it would be 1 again."""
    killed, final, scalars = killed_and_resumed(tmp_path_factory, 'flexmatch', '--confidence=0.6')
    unused = np.mean(killed['selected_label'] == -1)
    assert unused < 0.5 and killed['classwise_acc'].max() > 0
    assert final['global_step'] == 2048 and len(final['selected_label']) == 120 - 12
    assert max(_after(scalars, 'unused', killed['global_step'])) <= unused + 1e-6


def test_freematch_resumes_its_thresholds_after_sigkill(tmp_path_factory):
    """Every batch's mean top probability is >= 1/C, so after k steps from the killed tau,
    tau - 1/C >= 0.999^k (killed tau - 1/C); restarted from 1/C it would be about 0."""
    killed, final, scalars = killed_and_resumed(tmp_path_factory, 'freematch')
    start = 1 / 3.
    assert killed['time_p'] - start > 0.01
    for tau in _after(scalars, 'tau', killed['global_step']):
        assert tau - start >= 0.999 ** 128 * (killed['time_p'] - start)
    assert final['global_step'] == 2048 and abs(final['p_model'].sum() - 1) < 1e-5
