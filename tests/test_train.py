"""realmix.py end to end on a tiny dataset: train, SIGKILL, resume, evaluate, infer, bad input."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tiny_data
from libml import events, train
from conftest import (ROOT, assert_one_line_error, finish, kill_at_first_checkpoint, realmix,
                      run_dir_of)

TINY = ['--arch=smallconv', '--filters=8', '--batch=8', '--report_kimg=1', '--save_kimg=1',
        '--warmup_kimg=1', '--tune_kimg=1', '--eval_batch=16', '--device=cpu', '--seed=1',
        '--ema=0.9', '--w_match=1']
TABLE_HEADER = '                  labeled    valid     test'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A run killed with SIGKILL after its first checkpoint, then resumed to the end (3 epochs)."""
    root = str(tmp_path_factory.mktemp('data'))
    dataset = tiny_data.make_ssl_dataset(root) + '-12'
    train_dir = str(tmp_path_factory.mktemp('runs'))
    args = ['--dataset=' + dataset, '--train_dir=' + train_dir, '--train_kimg=3'] + TINY
    killed_output = kill_at_first_checkpoint(args, root, train_dir, timeout=180)
    code, resumed_output = finish(realmix(args, root))
    assert code == 0, resumed_output
    return dict(root=root, dataset=dataset, train_dir=train_dir, args=args,
                run_dir=run_dir_of(train_dir), killed_output=killed_output, output=resumed_output)


def test_resume_after_sigkill_finishes_at_the_planned_step_without_damaged_files(trained):
    assert 'Resumed from' in trained['output']
    run_dir = trained['run_dir']
    checkpoints = sorted(glob.glob(os.path.join(run_dir, 'tf', 'model.ckpt-*.index')))
    steps = sorted(int(p.split('-')[-1].split('.')[0]) for p in checkpoints)
    assert steps[-1] == 3 * 1024
    assert set(steps) <= {1024, 2048, 3072}  # every epoch boundary, nothing repeated or skipped
    with open(os.path.join(run_dir, 'stats.json')) as f:
        assert json.load(f)['step'] == 3072
    leftovers = [p for p in glob.glob(os.path.join(run_dir, '**', '*'), recursive=True)
                 if '.tmp' in os.path.basename(p) or '_temp' in p]
    assert leftovers == []
    # One progress bar per epoch: epochs 2 and 3 after the resume, none repeated.
    assert 'Epoch 1/3' not in trained['output'].split('Resumed from')[1]
    assert trained['output'].count('kimg 3 ') == 1


def test_result_table_and_stats_are_written(trained):
    with open(os.path.join(trained['run_dir'], 'result.txt')) as f:
        table = f.read().splitlines()
    assert table[0] == TABLE_HEADER
    assert [line.split()[0] for line in table[1:]] == ['raw', 'ema', 'tuned_raw', 'tuned_ema']
    with open(os.path.join(trained['run_dir'], 'stats.json')) as f:
        stats = json.load(f)
    assert set(stats['per_class_test_accuracy']) == {'class0', 'class1', 'class2'}
    for key in ('precision_macro', 'recall_weighted', 'f1_macro'):
        assert 0 <= stats[key] <= 100
    # The tiny task is learnable: the EMA model beats chance (33%) on the test set.
    assert stats['table']['ema']['test'] > 50
    assert 0 < stats['valid_loss'] < 5  # the EMA model's validation cross-entropy, as the reference logs
    # The run's output is ours alone: no TensorFlow C++ start-up lines.
    assert 'mlir_graph_optimization_pass' not in trained['output']
    assert 'absl::InitializeLog' not in trained['output']
    # The reference's unlabeled confidence summaries are logged with the losses.
    for name in ('min_unsup_prob', 'mean_unsup_prob', 'max_unsup_prob', 'tsa_kept', 'mask_ratio'):
        assert ' %s ' % name in trained['output']
    with open(os.path.join(trained['run_dir'], 'args', 'args.json')) as f:
        args = json.load(f)
    assert args['dataset'] == trained['dataset'] and args['nclass'] == 3 and args['wd'] == 0.02


def test_each_report_gives_the_speed_of_its_train_steps(trained):
    # Epochs 2 and 3 ran after the resume; each report line ends with its train steps' img/s.
    rates = re.findall(r'^kimg (\d) .* ([\d.]+) img/s$', trained['output'], re.M)
    assert [kimg for kimg, _ in rates] == ['2', '3'] and all(float(r) > 0 for _, r in rates)
    curve = events.read_scalars(trained['run_dir'])['progress/images_per_second']
    assert [step for step, _ in curve][-2:] == [2048, 3072]
    assert [v for _, v in curve][-2:] == pytest.approx([float(r) for _, r in rates], abs=0.051)


def test_training_speed_leaves_out_the_first_step_and_restarts_each_epoch():
    speed = train.TrainingSpeed()
    speed.add(8, 30.)  # the first step: building the kernels
    assert speed.epoch() is None
    speed.add(8, 0.5)
    speed.add(8, 0.5)
    assert speed.epoch() == 16.
    speed.add(16, 2.)
    assert speed.epoch() == 8.


def test_evaluating_the_checkpoint_reproduces_the_table(trained):
    # The network comes from the run's args.json, whatever the command line says.
    code, out = finish(realmix(['--eval_ckpt=' + os.path.join(trained['run_dir'], 'tf'), '--device=cpu',
                                '--arch=resnet', '--filters=32'], trained['root']))
    assert code == 0, out
    with open(os.path.join(trained['run_dir'], 'result.txt')) as f:
        table = f.read()
    assert table in out


def test_extract_accuracy_reads_the_event_files(trained):
    script = os.path.join(ROOT, 'scripts', 'extract_accuracy.py')
    out = subprocess.run([sys.executable, script, trained['run_dir'], '--last=1'],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(trained['run_dir'], 'stats', 'accuracy.json')) as f:
        accuracy = json.load(f)
    with open(os.path.join(trained['run_dir'], 'stats.json')) as f:
        stats = json.load(f)
    assert accuracy['test'] == pytest.approx(stats['table']['ema']['test'], abs=1e-3)
    assert accuracy['evaluations'] == 1 and accuracy['last_kimg'] == 3


def test_inference_on_class_folders_writes_predictions_and_accuracy(trained, tmp_path):
    from PIL import Image
    images, labels = tiny_data.class_images(9, seed=5)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / 'pics' / ('class%d' % label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(str(folder / ('%d.png' % i)))
    checkpoint = sorted(glob.glob(os.path.join(trained['run_dir'], 'tf', 'model.ckpt-3072.index')))[0]
    code, out = finish(realmix(['--perform_inference', '--inference_dir=' + str(tmp_path / 'pics'),
                                '--inference_ckpt=' + checkpoint[:-len('.index')], '--device=cpu'],
                               trained['root']))
    assert code == 0, out
    assert 'Accuracy on the 9 labeled images' in out
    probs = np.load(os.path.join(trained['run_dir'], 'inference', 'pics_pred.npy'))
    assert probs.shape == (9, 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-4)
    with open(os.path.join(trained['run_dir'], 'inference', 'pics_pred.csv')) as f:
        rows = f.read().splitlines()
    assert rows[0] == 'file,predicted_class,confidence' and len(rows) == 10


def test_bad_inputs_give_one_line_errors(trained, tmp_path):
    base = ['--train_dir=' + str(tmp_path), '--device=cpu']
    cases = [
        (['--dataset=tiny'], 'NAME.SEED@SIZE-VALID'),
        (['--dataset=tiny.1@99-0'], 'create_split.py --seed=1 --label_split_size=99'),
        (['--dataset=' + trained['dataset'], '--percent_mask=1.5'], '--percent_mask=1.5 is out of range: it must be in [-1, 1)'),
        (['--dataset=' + trained['dataset'], '--eval_ckpt=' + str(tmp_path / 'nope')], 'does not exist'),
        (['--dataset=' + trained['dataset'], '--load_checkpoint=' + os.path.join(trained['run_dir'], 'tf')]
         + TINY[:1] + ['--filters=16'], 'classify/conv2d/kernel with shape [3, 3, 1, 8]'),
        (['--perform_inference', '--inference_dir=' + str(tmp_path),
          '--inference_ckpt=' + os.path.join(trained['run_dir'], 'tf')], 'holds no PNG or JPEG images'),
    ]
    started = [(realmix(base + args, trained['root']), expected) for args, expected in cases]
    for process, expected in started:  # side by side: TensorFlow's start-up dominates each
        code, out = finish(process)
        assert_one_line_error(code, out, expected)
    assert not glob.glob(str(tmp_path / '*' / '*' / 'args')), 'a refused run left a run folder'


@pytest.mark.parametrize('changes,expected', [
    (dict(batch=2), '--batch=2 is out of range: it must be >= 3: interleaving needs at least'),
    (dict(lr=-1.), '--lr=-1.0 is out of range: it must be > 0'),
    (dict(ema=1.5), '--ema=1.5 is out of range: it must be in [0, 1)'),
    (dict(T=0.), '--T=0.0 is out of range: it must be > 0'),
    (dict(wd=0.5, lr=4.), '--wd=0.5 with --lr=4: weight decay multiplies kernels by 1 - wd * lr'),
])
def test_flags_out_of_range_are_refused_by_name(changes, expected):
    """The range rules of every flag (realmix.py turns the UserError into its one line)."""
    import methods
    from libml import hparams
    from libml.utils import UserError
    specs = methods.flag_specs('realmix')
    hp = dict(dict((spec.name, spec.default) for spec in specs), scales=3)  # as hyper_parameters sets
    hparams.check_flags(hp, specs)  # the defaults pass
    with pytest.raises(UserError) as error:
        hparams.check_flags(dict(hp, **changes), specs)
    assert expected in str(error.value)


def test_a_run_with_other_hyperparameters_never_shares_a_folder(trained):
    from libml import hparams
    name = os.path.basename(trained['run_dir'])
    # Every model-changing flag is in the name; schedule length and evaluation flags are not.
    for part in ('T0.5', 'tsa_rulereference', 'augmentcifar10', 'precisionfp32', 'beta0.75'):
        assert part in name.split('_') or part in name, (part, name)
    assert 'train_kimg' not in name and 'tune_kimg' not in name
    with open(os.path.join(trained['run_dir'], 'args', 'args.json')) as f:
        hp = json.load(f)
    assert hparams.experiment_name(hp) == name
    for changed in (dict(T=0.3), dict(augment='none'), dict(precision='mixed'), dict(tsa_rule='definition')):
        assert hparams.experiment_name(dict(hp, **changed)) != name
    assert hparams.experiment_name(dict(hp, train_kimg=99, tune_kimg=0, device='gpu')) == name


def test_a_run_folder_holding_another_model_is_refused(trained, tmp_path):
    import shutil
    train_dir = str(tmp_path / 'runs')
    shutil.copytree(os.path.dirname(trained['run_dir']), os.path.join(train_dir, trained['dataset']))
    run_dir = os.path.join(train_dir, trained['dataset'], os.path.basename(trained['run_dir']))
    args_path = os.path.join(run_dir, 'args', 'args.json')
    hp = json.load(open(args_path))
    with open(args_path, 'w') as f:
        json.dump(dict(hp, beta=0.5), f)  # as if written by another version with another naming
    before = open(args_path).read()
    code, out = finish(realmix(['--train_dir=' + train_dir] + trained['args'][:1] + trained['args'][2:],
                               trained['root']))
    assert_one_line_error(code, out, '--beta=0.75 here, 0.5 in the run')
    assert open(args_path).read() == before


def test_divergence_stops_with_one_line_and_no_bad_checkpoint(trained, tmp_path):
    train_dir = str(tmp_path / 'runs')
    code, out = finish(realmix(['--train_dir=' + train_dir, '--dataset=' + trained['dataset'],
                                '--train_kimg=2', '--lr=1e30', '--wd=0'] + TINY, trained['root']))
    assert_one_line_error(code, out, 'training diverged: the loss is not finite at')
    run = run_dir_of(train_dir)
    assert not os.path.exists(os.path.join(run, 'result.txt'))
    import tensorflow.compat.v1 as tf
    latest = tf.train.latest_checkpoint(os.path.join(run, 'tf'))
    if latest:  # whatever is left is finite
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            assert np.isfinite(reader.get_tensor(name)).all(), name


def test_inference_rejects_images_of_the_wrong_size(trained, tmp_path):
    from PIL import Image
    Image.fromarray(np.zeros([16, 16], np.uint8)).save(str(tmp_path / 'big.png'))
    code, out = finish(realmix(['--perform_inference', '--inference_dir=' + str(tmp_path),
                                '--inference_ckpt=' + os.path.join(trained['run_dir'], 'tf'),
                                '--device=cpu'], trained['root']))
    assert_one_line_error(code, out, 'big.png is 16x16x1 but the model takes 8x8x1')


def test_load_checkpoint_takes_every_weight_but_the_classifier_head(trained, tmp_path):
    import tensorflow.compat.v1 as tf
    import methods
    from libml import data, npu_config, train
    tf.disable_v2_behavior()
    with open(os.path.join(trained['run_dir'], 'args', 'args.json')) as f:
        hp = json.load(f)
    dataset = data.resolve(trained['dataset'], root=trained['root'])
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    trainer = train.Trainer(str(tmp_path / 'run'), hp, dataset, device, methods.get('realmix'))
    checkpoint = os.path.join(trained['run_dir'], 'tf', 'model.ckpt-3072')
    reader = tf.train.load_checkpoint(checkpoint)
    names = ('classify/conv2d/kernel', 'classify/dense/kernel',
             'classify/conv2d/kernel/ExponentialMovingAverage', 'classify/conv2d/kernel/Adam',
             'beta1_power', 'global_step')
    for reset in (False, True):
        with tf.Session(graph=trainer.graph) as session:
            trainer._start(session, checkpoint, reset_optimizer=reset)
            conv, head, conv_ema, conv_adam, power, step = session.run(
                [trainer.graph.get_tensor_by_name(name + ':0') for name in names])
        np.testing.assert_array_equal(conv, reader.get_tensor('classify/conv2d/kernel'))
        np.testing.assert_array_equal(conv_ema, reader.get_tensor(names[2]))
        assert not np.array_equal(head, reader.get_tensor('classify/dense/kernel'))
        assert step == 0  # a new run starts its own schedule
        # As the reference: Adam's slots and power accumulators come along, unless reset.
        assert np.array_equal(conv_adam, reader.get_tensor(names[3])) != reset
        assert (power == reader.get_tensor('beta1_power')) != reset


def test_checkpoints_have_the_reference_variable_layout(trained):
    """EMA shadows of trainable weights only, as the reference: its checkpoints load here and ours there."""
    import tensorflow.compat.v1 as tf
    reader = tf.train.load_checkpoint(os.path.join(trained['run_dir'], 'tf', 'model.ckpt-3072'))
    names = set(reader.get_variable_to_shape_map())
    weights = {n for n in names if n.startswith('classify/') and '/Adam' not in n
               and 'ExponentialMovingAverage' not in n}
    trainable = {n for n in weights if not n.endswith(('moving_mean', 'moving_variance'))}
    expected = (weights | {n + '/ExponentialMovingAverage' for n in trainable}
                | {n + suffix for n in trainable for suffix in ('/Adam', '/Adam_1')}
                | {'beta1_power', 'beta2_power', 'global_step'})
    assert names == expected
    assert any(n.endswith('moving_mean') for n in weights)

