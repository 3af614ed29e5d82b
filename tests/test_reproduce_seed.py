"""scripts/reproduce_seed.sh: data from image folders, one short epoch, the table and img/s."""

import os
import subprocess
import sys

import tiny_data
from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'reproduce_seed.sh')
SMALL = ['--arch=smallconv', '--filters=8', '--batch=8', '--report_kimg=1', '--tune_kimg=0',
         '--eval_batch=16', '--device=cpu', '--ema=0.9', '--w_match=1', '--warmup_kimg=1']


def write_folders(root):
    from PIL import Image
    for part, count, seed in (('train', 90, 0), ('test', 15, 1)):
        images, labels = tiny_data.class_images(count, seed=seed)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = os.path.join(root, part, 'class%d' % label)
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image[:, :, 0]).save(os.path.join(folder, '%03d.png' % i))


def run(args, ml_data):
    env = dict(os.environ, ML_DATA=ml_data, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    return subprocess.run(['bash', SCRIPT] + args, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)


def test_one_short_epoch_from_image_folders_prints_the_table_and_speed(tmp_path):
    write_folders(str(tmp_path / 'images'))
    ml_data = str(tmp_path / 'data')
    args = ['--images=' + str(tmp_path / 'images'), '--labels=30', '--valid=6', '--epochs=1',
            '--train_dir=' + str(tmp_path / 'runs'), '--'] + SMALL
    out = run(args, ml_data)
    assert out.returncode == 0, out.stdout
    assert os.path.isfile(os.path.join(ml_data, 'SSL', 'cifar10.1@30-label.tfrecord'))
    assert 'Epoch 1/1' in out.stdout
    assert 'EMA test accuracy' in out.stdout and 'img/s (seed: 740 img/s GPU' in out.stdout
    assert '--tsa=linear_schedule' not in out.stdout  # flags are ours, the output is the run's
    assert 'tsalinear_schedule' in out.stdout and 'tsa_rulereference' in out.stdout  # run name
    table = out.stdout.rstrip().splitlines()[-3:]  # header, raw, ema (no tuned rows at tune_kimg=0)
    assert table[0].split() == ['labeled', 'valid', 'test'] and table[2].split()[0] == 'ema'
    # Rerunning the same command finds the run complete and prints the table again.
    again = run(args, ml_data)
    assert again.returncode == 0 and 'Training already complete' in again.stdout, again.stdout


def test_bad_arguments_give_one_line(tmp_path):
    out = run(['--epochs=many'], str(tmp_path))
    assert out.returncode == 1 and out.stdout.strip().startswith('error: ')
    out = run(['--images=' + str(tmp_path / 'none')], str(tmp_path))
    assert out.returncode == 1 and out.stdout.strip().splitlines()[-1].startswith('error: --images=')
