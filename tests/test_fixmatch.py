"""realmix.py --method=fixmatch end to end on a tiny dataset: train, SIGKILL, resume, the table;
bad flags in one line each."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import tiny_data
from libml import events
from conftest import assert_one_line_error, finish, kill_at_first_checkpoint, realmix, run_dir_of

TINY = ['--method=fixmatch', '--arch=smallconv', '--filters=8', '--batch=8', '--uratio=2',
        '--report_kimg=1', '--save_kimg=1', '--tune_kimg=1', '--eval_batch=16', '--device=cpu',
        '--seed=1', '--ema=0.9', '--confidence=0.6', '--train_kimg=3']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A fixmatch run killed with SIGKILL after its first checkpoint, then resumed to the end."""
    root = str(tmp_path_factory.mktemp('data'))
    dataset = tiny_data.make_ssl_dataset(root, colors=3) + '-12'
    train_dir = str(tmp_path_factory.mktemp('runs'))
    args = ['--dataset=' + dataset, '--train_dir=' + train_dir] + TINY
    kill_at_first_checkpoint(args, root, train_dir)
    killed_at = [tf.train.load_variable(p[:-len('.index')], 'global_step') for p in
                 glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'model.ckpt-*.index'))]
    code, output = finish(realmix(args, root), timeout=400)
    assert code == 0, output
    return dict(root=root, dataset=dataset, args=args, run_dir=run_dir_of(train_dir),
                output=output, killed_at=killed_at)


def test_fixmatch_resumes_after_sigkill_and_finishes_with_the_table(trained):
    assert 'Resumed from' in trained['output']
    assert min(trained['killed_at']) >= 1024
    with open(os.path.join(trained['run_dir'], 'stats.json')) as f:
        assert json.load(f)['step'] == 3 * 1024
    assert os.path.isfile(os.path.join(trained['run_dir'], 'result.txt'))
    with open(os.path.join(trained['run_dir'], 'args', 'args.json')) as f:
        args = json.load(f)
    assert (args['method'], args['lr'], args['wd'], args['uratio']) == ('fixmatch', 0.03, 0.0005, 2)


def test_its_checkpoints_hold_the_momentum_slots_and_the_run_logs_its_mask(trained):
    newest = tf.train.latest_checkpoint(os.path.join(trained['run_dir'], 'tf'))
    saved = dict(tf.train.list_variables(newest))
    slots = [name for name in saved if name.endswith('/Momentum')]
    assert slots and not [name for name in saved if '/Adam' in name]
    assert any(np.abs(tf.train.load_variable(newest, name)).max() > 0 for name in slots)
    scalars = events.read_scalars(trained['run_dir'])
    for tag in ('losses/xe', 'losses/xeu', 'losses/mask', 'losses/lr', 'losses/wd'):
        assert tag in scalars, sorted(scalars)
    lr = [value for _, value in scalars['losses/lr']]
    assert lr[0] <= 0.03 and lr[-1] < lr[0]  # the cosine schedule runs on across the resume
    masks = [value for _, value in scalars['losses/mask']]
    assert all(0 <= m <= 1 for m in masks)


@pytest.mark.parametrize('flag, words', [
    ('--confidence=0', ('--confidence=0', 'in (0, 1]')),
    ('--confidence=1.5', ('--confidence=1.5', 'in (0, 1]')),
    ('--uratio=0', ('--uratio=0', '>= 1')),
    ('--wu=-1', ('--wu=-1', '>= 0'))])
def test_bad_fixmatch_flags_get_one_line_each(trained, tmp_path, flag, words):
    args = ['--dataset=' + trained['dataset'], '--train_dir=' + str(tmp_path)] + TINY + [flag]
    code, output = finish(realmix(args, trained['root']))
    assert_one_line_error(code, output, *words)
    assert not os.listdir(str(tmp_path))  # nothing written
