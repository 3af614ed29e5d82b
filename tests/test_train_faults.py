"""Nothing lost, whatever happens to a run (docs/training.md, "When things go wrong"): any batch
size, one writer per run folder, a saved stop on SIGTERM / SIGINT, damaged checkpoints, a full
disk (RLIMIT_FSIZE stands in for it)."""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow.compat.v1 as tf

import tiny_data
from conftest import ROOT, assert_one_line_error, file_size_limit, finish, realmix, run_dir_of
from libml import run_folder, stops
from libml.utils import write_text_atomic

TINY = ['--arch=smallconv', '--filters=8', '--report_kimg=1', '--save_kimg=1', '--warmup_kimg=1',
        '--tune_kimg=1', '--eval_batch=16', '--device=cpu', '--seed=1', '--ema=0.9', '--w_match=1']


def checkpoint_steps(run_dir):
    """{name's step: the global_step it holds} of every checkpoint of a run."""
    return {int(path.rsplit('-', 1)[1]): int(tf.train.load_variable(path, 'global_step'))
            for path in run_folder.checkpoints_newest_first(os.path.join(run_dir, 'tf'))}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    return root, tiny_data.make_ssl_dataset(root) + '-12'


@pytest.mark.parametrize('batch,replicas', [(5, 1), (3, 2)])
def test_any_batch_trains_and_each_checkpoint_holds_the_step_it_is_named(data_root, tmp_path,
                                                                         batch, replicas):
    root, dataset = data_root
    train_dir = str(tmp_path / 'runs')
    code, out = finish(realmix(['--dataset=' + dataset, '--train_dir=' + train_dir, '--batch=%d' % batch,
                                '--replicas=%d' % replicas, '--train_kimg=2'] + TINY, root))
    assert code == 0, out
    steps = checkpoint_steps(run_dir_of(train_dir))
    assert all(name == held for name, held in steps.items()), steps
    # Each period ends at the first step at or past it: 1024 and 2048 are not multiples of 5 or 6.
    global_batch = batch * replicas
    assert sorted(steps) == [-(-1024 // global_batch) * global_batch, -(-2048 // global_batch) * global_batch]
    assert 'error' not in out.lower() and 'E0000' not in out


def test_a_second_writer_is_refused_and_sigterm_saves_a_checkpoint_to_resume_from(data_root,
                                                                                 tmp_path):
    root, dataset = data_root
    train_dir = str(tmp_path / 'runs')
    args = ['--dataset=' + dataset, '--train_dir=' + train_dir, '--batch=6', '--train_kimg=200'] + TINY
    first = realmix(args, root)
    deadline = time.time() + 180
    while not glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'model.ckpt-*.index')):
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.05)
    code, out = finish(realmix(args, root))
    assert_one_line_error(code, out, 'in use by another training process',
                          'PID %d on host %s' % (first.pid, socket.gethostname()))
    first.send_signal(signal.SIGTERM)
    code, out = finish(first)
    assert code == 128 + signal.SIGTERM, out
    line = [l for l in out.splitlines() if l.startswith('Stopped by SIGTERM')]
    assert len(line) == 1 and 'Traceback' not in out, out
    stopped = int(re.search(r'at (\d+) images', line[0]).group(1))
    run_dir = run_dir_of(train_dir)
    saved = os.path.join(run_dir, 'tf', 'model.ckpt-%d' % stopped)
    assert 'saved %s;' % saved in line[0] and 'realmix.py' in line[0].split('rerun: ')[1]
    assert checkpoint_steps(run_dir)[stopped] == stopped
    # The same command resumes from the saved stop (here to the next whole kimg).
    resume = [a for a in args if not a.startswith('--train_kimg')] + ['--train_kimg=%d' % (stopped // 1024 + 1)]
    code, out = finish(realmix(resume, root))
    assert code == 0 and 'Resumed from %s\n' % saved in out, out


def test_a_lock_left_by_a_killed_process_is_taken_over(data_root, tmp_path):
    root, dataset = data_root
    train_dir = str(tmp_path / 'runs')
    args = ['--dataset=' + dataset, '--train_dir=' + train_dir, '--batch=8', '--train_kimg=1'] + TINY
    killed = realmix(args + ['--train_kimg=100'], root)
    deadline = time.time() + 180
    while not glob.glob(os.path.join(train_dir, '*', '*', '.lock')) or not open(
            glob.glob(os.path.join(train_dir, '*', '*', '.lock'))[0]).read():
        assert killed.poll() is None and time.time() < deadline
        time.sleep(0.05)
    killed.kill()
    killed.communicate()
    code, out = finish(realmix(args, root))
    assert code == 0, out
    assert 'Taking over the lock' in out and 'PID %d' % killed.pid in out, out
    with open(os.path.join(run_dir_of(train_dir), '.lock')) as f:
        assert f.read() == ''  # released at the end


def test_stop_signals_finish_the_step_then_a_second_signal_stops_at_once():
    with stops.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs between bytecodes
        assert signals.requested and signals.signum == signal.SIGINT
        assert 128 + signals.exit_signal == 130
        # The first signal put back the default actions: a second one ends the process at once.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def _run_args(dataset, train_dir):
    # --filters after TINY's: the last one counts.
    return (['--dataset=' + dataset, '--train_dir=' + train_dir, '--batch=8', '--train_kimg=3']
            + TINY + ['--filters=32'])


@pytest.fixture(scope='module')
def finished_run(data_root, tmp_path_factory):
    """A run of 3 checkpoints (1, 2 and 3 kimg), trained once; 32 filters make a checkpoint
    outweigh an epoch's event records."""
    root, dataset = data_root
    train_dir = str(tmp_path_factory.mktemp('finished') / 'runs')
    code, out = finish(realmix(_run_args(dataset, train_dir), root))
    assert code == 0, out
    return train_dir


@pytest.fixture
def stopped_run(data_root, finished_run, tmp_path):
    """A test's own copy of the finished run, to damage as it likes."""
    root, dataset = data_root
    train_dir = str(tmp_path / 'runs')
    shutil.copytree(finished_run, train_dir)
    return dict(root=root, args=_run_args(dataset, train_dir), run_dir=run_dir_of(train_dir))


def test_a_damaged_newest_checkpoint_is_skipped_and_none_restoring_is_one_line(stopped_run):
    run_dir, args, root = stopped_run['run_dir'], stopped_run['args'], stopped_run['root']
    folder = os.path.join(run_dir, 'tf')
    os.truncate(os.path.join(folder, 'model.ckpt-3072.data-00000-of-00001'), 100)
    more = [a for a in args if not a.startswith('--train_kimg')] + ['--train_kimg=4']
    code, out = finish(realmix(more, root))
    assert code == 0, out
    skipped = [l for l in out.splitlines() if l.startswith('Skipped checkpoint')]
    assert len(skipped) == 1 and skipped[0].startswith(
        'Skipped checkpoint %s: it does not restore (' % os.path.join(folder, 'model.ckpt-3072'))
    assert 'Resumed from %s' % os.path.join(folder, 'model.ckpt-2048') in out
    assert 'Traceback' not in out
    # Every checkpoint damaged: one line, exit 1, nothing deleted.
    for path in glob.glob(os.path.join(folder, 'model.ckpt-*.data-*')):
        os.truncate(path, 10)
    before = sorted(os.listdir(folder))
    code, out = finish(realmix(more + ['--train_kimg=9'], root))
    assert_one_line_error(code, out, 'none of the 4 checkpoints in %s restores' % folder,
                          'nothing was deleted')
    assert sorted(os.listdir(folder)) == before


def test_a_full_disk_stops_in_one_line_and_keeps_the_previous_checkpoint(stopped_run, tmp_path):
    run_dir, args, root = stopped_run['run_dir'], stopped_run['args'], stopped_run['root']
    folder = os.path.join(run_dir, 'tf')
    data_size = os.path.getsize(os.path.join(folder, 'model.ckpt-3072.data-00000-of-00001'))
    more = [a for a in args if not a.startswith('--train_kimg')] + ['--train_kimg=5']
    # Event files write little at a time; a checkpoint's data file is written whole.
    code, out = finish(realmix(more + ['--report_kimg=2'], root, preexec_fn=file_size_limit(data_size - 1)))
    assert_one_line_error(code, out, 'could not save the checkpoint of 4096 images in ' + folder,
                          'File too large', 'the previous checkpoint %s is intact'
                          % os.path.join(folder, 'model.ckpt-3072'))
    assert not glob.glob(os.path.join(folder, 'model.ckpt-4096*')) and not glob.glob(
        os.path.join(folder, '*_temp*'))
    # The event file fills up first when the limit is smaller still (args.json still fits).
    args_size = os.path.getsize(os.path.join(run_dir, 'args', 'args.json'))
    code, out = finish(realmix(more, root, preexec_fn=file_size_limit(args_size + 200)))
    assert_one_line_error(code, out, 'could not write the TensorBoard events', 'File too large')
    previous = tf.train.load_checkpoint(os.path.join(folder, 'model.ckpt-3072'))  # intact:
    for name in previous.get_variable_to_shape_map():                           # every tensor reads
        previous.get_tensor(name)
    assert run_folder.checkpoints_newest_first(folder)[0].endswith('model.ckpt-3072')
    # An export on a full disk: one line, no export folder (nor its temporary one).
    done = _limited(data_size - 1, [sys.executable, os.path.join(ROOT, 'scripts', 'export.py'), run_dir])
    assert_one_line_error(done.returncode, done.stdout, 'could not write %s' % os.path.join(run_dir, 'export'),
                          'File too large')
    assert not [name for name in os.listdir(run_dir) if 'export' in name]


def _limited(limit, command, **kwargs):
    return subprocess.run(command, preexec_fn=file_size_limit(limit), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)


def test_a_report_that_cannot_be_written_leaves_the_old_one_and_says_so(tmp_path):
    path = str(tmp_path / 'result.txt')
    write_text_atomic(path, 'old table\n')
    code = ('import sys; sys.path.insert(0, %r)\n'
            'from libml.utils import write_text_atomic, UserError\n'
            'try:\n    write_text_atomic(%r, "x" * 100000)\n'
            'except UserError as e:\n    print("error: %%s" %% e); sys.exit(1)\n' % (ROOT, path))
    done = _limited(4096, [sys.executable, '-c', code])
    assert_one_line_error(done.returncode, done.stdout, 'could not write ' + path, 'File too large')
    with open(path) as f:
        assert f.read() == 'old table\n'
    assert os.listdir(str(tmp_path)) == ['result.txt']


def test_a_dataset_tool_on_a_full_disk_writes_nothing(data_root, tmp_path):
    root, _ = data_root
    out = str(tmp_path / 'split')
    done = _limited(2000, [sys.executable, os.path.join(ROOT, 'scripts', 'create_split.py'), '--seed=2',
                           '--label_split_size=30', out + '/tiny', os.path.join(root, 'tiny-train.tfrecord')],
                    env=dict(os.environ, ML_DATA=root))
    assert_one_line_error(done.returncode, done.stdout, 'could not write', 'File too large')
    assert not os.path.exists(out) or os.listdir(out) == []
