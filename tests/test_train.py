"""realmix.py end to end on a tiny dataset: train, SIGKILL, resume, evaluate, infer, bad input."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_data
from conftest import ROOT

TINY = ['--arch=convnet', '--filters=8', '--batch=8', '--report_kimg=1', '--save_kimg=1',
        '--warmup_kimg=1', '--tune_kimg=1', '--eval_batch=16', '--device=cpu', '--seed=1',
        '--ema=0.9', '--w_match=1']
TABLE_HEADER = '                  labeled    valid     test'


def realmix(args, ml_data, **kwargs):
    env = dict(os.environ, ML_DATA=ml_data, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'realmix.py')] + args, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(process, timeout=240):
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def run_dir_of(train_dir):
    runs = glob.glob(os.path.join(train_dir, '*', '*'))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A run killed with SIGKILL after its first checkpoint, then resumed to the end (3 epochs)."""
    root = str(tmp_path_factory.mktemp('data'))
    dataset = tiny_data.make_ssl_dataset(root) + '-12'
    train_dir = str(tmp_path_factory.mktemp('runs'))
    args = ['--dataset=' + dataset, '--train_dir=' + train_dir, '--train_kimg=3'] + TINY
    first = realmix(args, root)
    deadline = time.time() + 180
    while not glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'checkpoint')):
        assert first.poll() is None, first.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    killed_output = first.communicate()[0]
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
    with open(os.path.join(trained['run_dir'], 'args', 'args.json')) as f:
        args = json.load(f)
    assert args['dataset'] == trained['dataset'] and args['nclass'] == 3 and args['wd'] == 0.02


def test_evaluating_the_checkpoint_reproduces_the_table(trained):
    code, out = finish(realmix(trained['args'] + ['--eval_ckpt=' + os.path.join(trained['run_dir'], 'tf')],
                               trained['root']))
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


def _one_line_error(code, out):
    errors = [line for line in out.splitlines() if line.startswith('error: ')]
    return code != 0 and len(errors) == 1 and 'Traceback' not in out, errors


def test_bad_inputs_give_one_line_errors(trained, tmp_path):
    base = ['--train_dir=' + str(tmp_path), '--device=cpu']
    cases = [
        (['--dataset=tiny'], 'NAME.SEED@SIZE-VALID'),
        (['--dataset=tiny.1@99-0'], 'create_split.py --seed=1 --label_split_size=99'),
        (['--dataset=' + trained['dataset'], '--percent_mask=1.5'], '--percent_mask=1.5 is outside'),
        (['--dataset=' + trained['dataset'], '--batch=2'], 'interleaving needs at least'),
        (['--dataset=' + trained['dataset'], '--eval_ckpt=' + str(tmp_path / 'nope')], 'does not exist'),
        (['--perform_inference', '--inference_dir=' + str(tmp_path),
          '--inference_ckpt=' + os.path.join(trained['run_dir'], 'tf')], 'holds no PNG or JPEG images'),
    ]
    for args, expected in cases:
        code, out = finish(realmix(base + args, trained['root']))
        ok, errors = _one_line_error(code, out)
        assert ok and expected in errors[0], (args, out)


def test_inference_rejects_images_of_the_wrong_size(trained, tmp_path):
    from PIL import Image
    Image.fromarray(np.zeros([16, 16], np.uint8)).save(str(tmp_path / 'big.png'))
    code, out = finish(realmix(['--perform_inference', '--inference_dir=' + str(tmp_path),
                                '--inference_ckpt=' + os.path.join(trained['run_dir'], 'tf'),
                                '--device=cpu'], trained['root']))
    ok, errors = _one_line_error(code, out)
    assert ok and 'big.png is 16x16x1 but the model takes 8x8x1' in errors[0], out


def test_load_checkpoint_takes_every_weight_but_the_classifier_head(trained, tmp_path):
    import tensorflow.compat.v1 as tf
    import realmix
    from libml import data, npu_config, train
    tf.disable_v2_behavior()
    with open(os.path.join(trained['run_dir'], 'args', 'args.json')) as f:
        hp = json.load(f)
    dataset = data.resolve(trained['dataset'], root=trained['root'])
    device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
    trainer = train.Trainer(str(tmp_path / 'run'), hp, dataset, device, realmix.build_graph)
    checkpoint = os.path.join(trained['run_dir'], 'tf', 'model.ckpt-3072')
    reader = tf.train.load_checkpoint(checkpoint)
    with tf.Session(graph=trainer.graph) as session:
        trainer._start(session, checkpoint)
        conv, head, conv_ema, step = session.run(
            [trainer.graph.get_tensor_by_name(name + ':0') for name in (
                'classify/conv2d/kernel', 'classify/dense/kernel',
                'classify/conv2d/kernel/ExponentialMovingAverage', 'global_step')])
    np.testing.assert_array_equal(conv, reader.get_tensor('classify/conv2d/kernel'))
    np.testing.assert_array_equal(conv_ema, reader.get_tensor('classify/conv2d/kernel/ExponentialMovingAverage'))
    assert not np.array_equal(head, reader.get_tensor('classify/dense/kernel'))
    assert step == 0  # a new run starts its own schedule
