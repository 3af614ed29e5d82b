"""libml/run_folder.py: a run folder's layout, checkpoints and what evaluation and fine-tuning restore."""
import ast
import os

import pytest
import tensorflow.compat.v1 as tf

from conftest import ROOT
from libml import run_folder
from libml.utils import UserError


def write_checkpoints(folder, steps):
    for step in steps:
        for ext in ('index', 'data-00000-of-00001'):
            (folder / ('model.ckpt-%d.%s' % (step, ext))).write_text('x')
    (folder / 'checkpoint').write_text(
        'model_checkpoint_path: "model.ckpt-%d"\n' % steps[-1] + ''.join(
            'all_model_checkpoint_paths: "model.ckpt-%d"\n' % s for s in steps))


def test_drop_checkpoints_from_keeps_the_older_ones_as_newest(tmp_path):
    folder = str(tmp_path)
    write_checkpoints(tmp_path, (1024, 2048, 3072))
    kept = run_folder.drop_checkpoints_from(folder, 2048)
    assert kept == os.path.join(folder, 'model.ckpt-1024')
    assert sorted(os.listdir(folder)) == ['checkpoint', 'model.ckpt-1024.data-00000-of-00001',
                                          'model.ckpt-1024.index']
    assert tf.train.latest_checkpoint(folder) == kept
    assert run_folder.drop_checkpoints_from(folder, 0) == '' and os.listdir(folder) == []


def test_checkpoints_are_listed_newest_first_from_their_files_and_found_by_step(tmp_path):
    run = tmp_path / 'run'
    (run / 'tf').mkdir(parents=True)
    write_checkpoints(run / 'tf', (1024, 10240, 2048))
    (run / 'tf' / 'model.ckpt-4096.data-00000-of-00001').write_text('x')  # no index: incomplete
    (run / 'tf' / 'checkpoint').unlink()  # a lost state file hides nothing
    assert [os.path.basename(p) for p in run_folder.checkpoints_newest_first(str(run / 'tf'))] == [
        'model.ckpt-10240', 'model.ckpt-2048', 'model.ckpt-1024']
    assert run_folder.checkpoint_steps(str(run)) == [1024, 2048, 10240]
    assert run_folder.find_checkpoint(str(run)).endswith('model.ckpt-10240')
    assert run_folder.find_checkpoint(str(run), 2048).endswith('model.ckpt-2048')
    with pytest.raises(UserError, match='no checkpoint at step 4096.*1024, 2048, 10240'):
        run_folder.find_checkpoint(str(run), 4096)
    assert run_folder.run_of_checkpoint(str(run / 'tf' / 'model.ckpt-2048')) == str(run)


def test_args_json_is_written_and_read_back_and_a_damaged_one_is_one_error(tmp_path):
    assert run_folder.read_args(str(tmp_path)) is None
    run_folder.write_args(str(tmp_path), {'lr': 0.002, 'method': 'realmix'})
    assert run_folder.read_args(str(tmp_path)) == {'lr': 0.002, 'method': 'realmix'}
    with open(run_folder.args_path(str(tmp_path)), 'w') as f:
        f.write('{')
    with pytest.raises(UserError, match='args.json is not valid JSON'):
        run_folder.read_args(str(tmp_path))


def _variables_of_a_step(optimizer_slots, powers_scope=''):
    """Variables named as a step creates them: the model, its EMA, an optimizer's state."""
    for name in ('classify/conv2d/kernel', 'classify/dense/kernel'):
        tf.get_variable(name, [1])
        tf.get_variable(name + '/ExponentialMovingAverage', [1])
        for slot in optimizer_slots:
            tf.get_variable('%s/%s' % (name, slot), [1])
    if 'Adam' in optimizer_slots:
        with tf.variable_scope(powers_scope) if powers_scope else tf.variable_scope(tf.get_variable_scope()):
            tf.get_variable('beta1_power', [])
        tf.get_variable('beta2_power', [])
    tf.get_variable('global_step', [], tf.int64)
    tf.get_variable('method_state/queue', [1])


@pytest.mark.parametrize('slots', [('Adam', 'Adam_1'), ('Momentum',)])
def test_evaluation_restores_the_model_without_any_optimizers_state(slots):
    with tf.Graph().as_default():
        _variables_of_a_step(slots)
        names = sorted(v.op.name for v in run_folder.model_variables())
    assert names == ['classify/conv2d/kernel', 'classify/conv2d/kernel/ExponentialMovingAverage',
                     'classify/dense/kernel', 'classify/dense/kernel/ExponentialMovingAverage',
                     'global_step']


def test_fine_tuning_carries_adam_powers_wherever_loss_scaling_puts_them():
    """Loss-scaled optimizers create Adam's powers in a cond scope (cond/beta1_power on the NPU,
    cond_1/beta1_power on GPU): --load_checkpoint must carry them too."""
    with tf.Graph().as_default():
        _variables_of_a_step(('Adam', 'Adam_1'), powers_scope='cond')
        names = sorted(v.op.name for v in run_folder.fine_tune_variables(reset_optimizer=False))
        reset = sorted(v.op.name for v in run_folder.fine_tune_variables(reset_optimizer=True))
    weights = ['classify/conv2d/kernel', 'classify/conv2d/kernel/ExponentialMovingAverage']
    assert names == ['beta2_power'] + weights[:1] + ['classify/conv2d/kernel/Adam',
                                                     'classify/conv2d/kernel/Adam_1'] + weights[1:] + [
                                                         'cond/beta1_power']
    assert reset == weights


def test_fine_tuning_carries_or_resets_a_momentum_optimizers_slots():
    with tf.Graph().as_default():
        _variables_of_a_step(('Momentum',))
        names = sorted(v.op.name for v in run_folder.fine_tune_variables(reset_optimizer=False))
        reset = sorted(v.op.name for v in run_folder.fine_tune_variables(reset_optimizer=True))
    weights = ['classify/conv2d/kernel', 'classify/conv2d/kernel/ExponentialMovingAverage']
    assert names == weights + ['classify/conv2d/kernel/Momentum']
    assert reset == weights


def test_a_checkpoint_without_the_optimizers_slots_names_reset_optimizer(tmp_path):
    path = str(tmp_path / 'model.ckpt-64')
    with tf.Graph().as_default():
        _variables_of_a_step(())  # a checkpoint without Momentum's slots
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            tf.train.Saver().save(session, path, write_meta_graph=False)
    with tf.Graph().as_default():
        _variables_of_a_step(('Momentum',))
        restore = run_folder.CheckedRestore(run_folder.fine_tune_variables(reset_optimizer=False))
        with tf.Session() as session, pytest.raises(UserError, match='--reset_optimizer starts'):
            restore.restore(session, path)


def _libml_imports(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == 'libml':
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('libml.'):
            yield node.module.split('.')[1]


@pytest.mark.parametrize('module', ['evaluation', 'inference', 'export', 'hparams', 'graph',
                                    'run_folder'])
def test_evaluation_inference_export_and_the_flags_do_not_import_the_training_loop(module):
    assert 'train' not in set(_libml_imports(os.path.join('libml', module + '.py')))
