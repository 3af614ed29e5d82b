"""run_sh.py, the ModelArts boot file: staging, split, training, evaluation and outputs, OBS and local."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import conftest

from obs_server import obs_server  # noqa: F401  (pytest fixture)
from libml import records
import run_sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'run_sh.py')
NAME, NCLASS = 'tiny', 3
SPLIT = ['--dataset=' + NAME, '--seed=1', '--label_size=15', '--valid_size=6']
# Passed through to realmix.py: a network and a schedule that train in seconds.
TINY = ['--arch=smallconv', '--filters=8', '--train_kimg=2', '--report_kimg=1', '--save_kimg=1',
        '--warmup_kimg=1', '--tune_kimg=1', '--eval_batch=32']
RUN_GLOB = '%s.1@15-6/*/' % NAME
TABLE_HEADER = 'labeled    valid     test'


def write_tiny_dataset(folder, with_split=False):
    """8x8 grayscale images of 3 classes (a bright row per class): NAME-train/-test, class names."""
    rng = np.random.RandomState(0)

    def images(count):
        labels = np.arange(count) % NCLASS
        pixels = rng.randint(0, 60, (count, 8, 8, 1))
        for i, label in enumerate(labels):
            pixels[i, 2 * label + 1, :, 0] = 255
        return pixels.astype(np.uint8), labels
    records.write_arrays(os.path.join(folder, NAME + '-train.tfrecord'), *images(60))
    records.write_arrays(os.path.join(folder, NAME + '-test.tfrecord'), *images(15))
    records.write_class_mappings(os.path.join(folder, NAME + '_class_mappings.json'), ['a', 'b', 'c'])
    if with_split:  # a split made beforehand: the job must use it as it is
        train_images, train_labels = records.load_arrays(os.path.join(folder, NAME + '-train.tfrecord'))
        stem = os.path.join(folder, 'SSL', NAME + '.1@15')
        records.write_arrays(stem + '-label.tfrecord', train_images[:15], train_labels[:15])
        records.write_arrays(stem + '-unlabel.tfrecord', train_images[15:], train_labels[15:])
    return folder


def run_job(cwd, args, env=None, timeout=120):
    """run_sh.py as a subprocess in `cwd`, with $ML_DATA inside it."""
    env = dict(env or os.environ, ML_DATA=os.path.join(str(cwd), 'data'))
    env.pop('MA_JOB_DIR', None)
    return subprocess.run([sys.executable, SCRIPT] + list(args), cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *words):
    conftest.assert_one_line_error(proc.returncode, proc.stderr, *words)


def result_rows(path):
    with open(path) as f:
        lines = f.read().splitlines()
    assert TABLE_HEADER in lines[0]
    return [line.split()[0] for line in lines[1:]]


def test_obs_job_stages_data_and_returns_checkpoints_and_result(obs_server, tmp_path):  # noqa: F811
    write_tiny_dataset(str(tmp_path / 'upload'))
    obs_server.make_bucket('bkt')
    obs_server.put_tree(str(tmp_path / 'upload'), 'bkt', 'data')
    proc = run_job(tmp_path, ['--data_url=obs://bkt/data', '--train_url=obs://bkt/out', '--epochs=2']
                   + SPLIT + TINY, env=obs_server.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = obs_server.read_tree('bkt', 'out')
    runs = {key.split('/')[1] for key in out if key.startswith(NAME + '.1@15-6/')}
    assert len(runs) == 1, sorted(out)
    run = '%s.1@15-6/%s/' % (NAME, runs.pop())
    assert out[run + 'tf/checkpoint'].decode().splitlines()[0].endswith('model.ckpt-2048"')
    assert {run + 'tf/model.ckpt-1024.index', run + 'tf/model.ckpt-2048.index'} <= set(out)
    assert json.loads(out[run + 'args/args.json'])['arch'] == 'smallconv'  # a realmix.py flag got there
    assert out['result.txt'] == out[run + 'result.txt']
    assert TABLE_HEADER in out['result.txt'].decode()
    for secret in (obs_server.secret_access_key, obs_server.access_key_id):
        assert secret not in proc.stdout + proc.stderr


def job_args(base, epochs):
    """A job with local --data_url and --train_url, its scratch train dir at one place, as /cache is."""
    return ['--data_url=' + str(base / 'bucket_data'), '--train_url=' + str(base / 'out'),
            '--train_dir=' + str(base / 'cache' / 'experiments'), '--epochs=%d' % epochs] + SPLIT + TINY


def test_missing_train_url_bucket_fails_before_training(obs_server, tmp_path):  # noqa: F811
    data_url = write_tiny_dataset(str(tmp_path / 'bucket_data'), with_split=True)
    proc = run_job(tmp_path, ['--data_url=' + data_url, '--train_url=obs://no-such-bkt/out'] + SPLIT,
                   env=obs_server.env)
    assert_one_line_error(proc, 'no-such-bkt')
    assert not (tmp_path / 'experiments').exists()
    assert obs_server.secret_access_key not in proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def local_job(tmp_path_factory):
    """One job with local --data_url (split included) and --train_url, stopped after epoch 1 of 2."""
    base = tmp_path_factory.mktemp('local_job')
    data_url = write_tiny_dataset(str(base / 'bucket_data'), with_split=True)
    before = sorted(os.listdir(data_url))
    (base / 'job1').mkdir()
    return base, data_url, before, run_job(base / 'job1', job_args(base, epochs=1))


def test_local_job_fills_train_url_and_writes_the_result_table(local_job):
    base, data_url, before, proc = local_job
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'drawing the split' not in proc.stdout  # the split in data_url was used as it is
    assert sorted(os.listdir(data_url)) == before  # data_url is only read
    run = glob.glob(str(base / 'out' / RUN_GLOB))
    assert len(run) == 1
    for rel in ('tf/checkpoint', 'tf/model.ckpt-1024.index', 'args/args.json', 'result.txt', 'stats.json'):
        assert os.path.isfile(os.path.join(run[0], rel)), rel
    assert glob.glob(os.path.join(run[0], 'tf', 'events.out.tfevents.*'))
    rows = result_rows(str(base / 'job1' / 'result.txt'))
    assert rows == ['raw', 'ema', 'tuned_raw', 'tuned_ema']
    assert proc.stdout.rstrip().endswith(open(str(base / 'job1' / 'result.txt')).read().rstrip())


def test_restarted_job_resumes_from_the_checkpoints_in_train_url(local_job):
    base, data_url, _, first = local_job
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(str(base / 'cache'))  # a fresh machine: nothing local but the code
    (base / 'job2').mkdir()
    proc = run_job(base / 'job2', job_args(base, epochs=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resumed from' in proc.stdout and 'model.ckpt-1024' in proc.stdout
    run = glob.glob(str(base / 'out' / RUN_GLOB))[0]
    assert os.path.isfile(os.path.join(run, 'tf', 'model.ckpt-2048.index'))


def test_unknown_flag_goes_to_realmix_which_rejects_a_bad_value(local_job):
    base, data_url, _, _ = local_job
    (base / 'job3').mkdir()
    proc = run_job(base / 'job3', ['--data_url=' + data_url, '--arch=bogus'] + SPLIT)
    assert_one_line_error(proc, '--arch=bogus')
    assert not (base / 'job3' / 'experiments').exists()


def test_missing_dataset_in_data_url_gives_one_line(tmp_path):
    data_url = write_tiny_dataset(str(tmp_path / 'bucket_data'))
    proc = run_job(tmp_path, ['--data_url=' + data_url, '--dataset=cifar10'])
    assert_one_line_error(proc, 'cifar10-test.tfrecord', 'create_datasets.py cifar10')
    assert not (tmp_path / 'experiments').exists()


@pytest.mark.parametrize('args, words', [
    (['--data_url=/no/such/folder'], ['--data_url=/no/such/folder', 'not a folder']),
    (['--label_size=0'], ['--label_size']),
    (['--eval_ckpt=x'], ['--eval_ckpt', 'realmix.py']),
    (['stray'], ['stray']),
])
def test_bad_arguments_give_one_line_before_any_work(tmp_path, args, words):
    proc = run_job(tmp_path, args)
    assert_one_line_error(proc, *words)
    assert os.listdir(str(tmp_path)) == []


def test_background_sync_uploads_each_new_checkpoint(tmp_path):
    train_dir, out = str(tmp_path / 'experiments'), str(tmp_path / 'out')
    checkpoint = os.path.join(train_dir, 'ds.1@4-0', 'exp', 'tf', 'checkpoint')
    os.makedirs(os.path.dirname(checkpoint))
    remote = os.path.join(out, 'ds.1@4-0', 'exp', 'tf', 'checkpoint')

    def wait_for_remote(text):
        deadline = time.time() + 10
        while not (os.path.isfile(remote) and open(remote).read() == text):
            assert time.time() < deadline, 'checkpoint not synced'
            time.sleep(0.02)
    with run_sh.CheckpointSync(train_dir, 'ds.1@4-0', out, every_s=0.02):
        for step in ('model.ckpt-1024', 'model.ckpt-2048'):  # same size, new content
            with open(checkpoint, 'w') as f:
                f.write(step)
            wait_for_remote(step)



def test_two_rank_job_rank_0_stages_and_publishes_every_rank_trains(tmp_path):
    """scripts/launch.py starts run_sh.py twice (as ModelArts does once per card): rank 1 waits
    for rank 0's data marker, both train one model, rank 0 alone evaluates and publishes."""
    write_tiny_dataset(str(tmp_path / 'bucket_data'))
    env = dict(os.environ, ML_DATA=str(tmp_path / 'data'), CUDA_VISIBLE_DEVICES='')
    env.pop('MA_JOB_DIR', None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'launch.py'), '--workers=2',
         '--log_dir=' + str(tmp_path / 'logs'), SCRIPT, '--data_url=' + str(tmp_path / 'bucket_data'),
         '--train_url=' + str(tmp_path / 'out'), '--train_dir=' + str(tmp_path / 'experiments'),
         '--epochs=1', '--device=cpu'] + SPLIT + TINY,
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rank1 = (tmp_path / 'logs' / 'worker-1.log').read_text()
    assert 'waiting for rank 0 to stage the data' in rank1 and 'evaluating' not in rank1
    assert 'multiworker, 2 replicas, rank 1 of 2' in rank1
    assert 'multiworker, 2 replicas, rank 0 of 2' in proc.stdout
    assert len(glob.glob(str(tmp_path / 'out' / RUN_GLOB))) == 1
    assert result_rows(str(tmp_path / 'out' / 'result.txt'))[:2] == ['raw', 'ema']


def test_a_rank_waits_for_this_job_s_marker_not_an_old_one(tmp_path, monkeypatch):
    marker = str(tmp_path / '.realmix-ready-x')
    with open(marker, 'w') as f:
        f.write('an earlier job')
    with pytest.raises(run_sh.UserError, match='rank 0 did not stage the data within 1 s'):
        run_sh.wait_for_rank_0(marker, 'this job', timeout_s=1)


def test_sigterm_to_the_job_saves_copies_the_checkpoint_out_and_exits_143(tmp_path):
    """ModelArts stops a job with SIGTERM: run_sh.py passes it on once, realmix.py finishes its
    step and saves, the new checkpoint reaches --train_url, and the job exits 128 + 15."""
    write_tiny_dataset(str(tmp_path / 'bucket_data'), with_split=True)
    args = [a for a in job_args(tmp_path, epochs=200) if not a.startswith('--train_kimg')]
    env = dict(os.environ, ML_DATA=str(tmp_path / 'data'))
    env.pop('MA_JOB_DIR', None)
    proc = subprocess.Popen([sys.executable, SCRIPT] + args + ['--train_kimg=200'], cwd=str(tmp_path),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not glob.glob(str(tmp_path / 'cache' / 'experiments' / RUN_GLOB / 'tf' / 'model.ckpt-*.index')):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (out, err)
    assert 'Traceback' not in err and 'error:' not in err, err
    stopped = re.search(r'^Stopped by SIGTERM at (\d+) images', out, re.M)
    assert stopped and out.rstrip().splitlines()[-1].startswith(
        '==> training stopped on request after saving a checkpoint (exit status 143)'), out
    run = glob.glob(str(tmp_path / 'out' / RUN_GLOB))[0]
    assert os.path.isfile(os.path.join(run, 'tf', 'model.ckpt-%s.index' % stopped.group(1)))
