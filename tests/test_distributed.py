"""Data-parallel training on this CPU: two worker processes (MultiWorkerMirroredStrategy, through
scripts/launch.py) against one process with two replicas (MirroredStrategy) and against one worker
with the global batch; a worker killed mid-run; one-line errors for a bad cluster environment.
The workers run tests/distributed_worker.py (the library's step from fixed initial weights)."""
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import tiny_data
from conftest import ROOT
from libml import npu_config, run_folder
from libml.utils import UserError

LAUNCH = os.path.join(ROOT, 'scripts', 'launch.py')
WORKER = os.path.join(ROOT, 'tests', 'distributed_worker.py')
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
# Under batch norm a conv bias gets a zero gradient up to rounding, which Adam turns into full
# steps of either sign, and the moving means carry those biases: two engines that add the same
# gradients in another order part there (the bias, its Adam slots and average, the moving mean),
# and only there (see docs/devices.md).
BIAS_BEFORE_BATCH_NORM = ('classify/conv2d/bias', 'classify/batch_normalization/moving_mean')


def start(out, arch, batch, steps, workers=1, replicas=1, root=None):
    args = [WORKER, out, root, 'tiny.1@16-0', 'supervised', arch, str(batch), str(steps),
            str(replicas), 'none']
    if workers > 1:
        args = [LAUNCH, '--workers=%d' % workers, '--log_dir=' + out + '-logs'] + args
    return subprocess.Popen([sys.executable] + args, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """16 labeled images, so each of 2 replicas' batches of 8 is its whole shard (the order of a
    batch does not change its gradient): every setup sees the same data at every step."""
    root = str(tmp_path_factory.mktemp('data'))
    tiny_data.make_ssl_dataset(root, labeled=16, unlabeled=32)
    out = str(tmp_path_factory.mktemp('runs'))
    setups = dict(two_workers=('smallconv', 8, 5, 2, 1), two_replicas=('smallconv', 8, 5, 1, 2),
                  two_workers_no_bn=('convnet', 8, 3, 2, 1), one_worker_no_bn=('convnet', 16, 3, 1, 1))
    procs = {name: start(os.path.join(out, name), *setting[:3], workers=setting[3],
                         replicas=setting[4], root=root)
             for name, setting in setups.items()}
    for name, proc in procs.items():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, (name, output)
    found = {os.path.basename(path)[:-4]: dict(np.load(path))
             for path in glob.glob(os.path.join(out, '*.npz'))}
    for path in glob.glob(os.path.join(out, '*.json')):  # the step's collectives, per rank
        with open(path) as f:
            found[os.path.basename(path)[:-5] + '.step'] = json.load(f)
    return found


def differences(a, b, skip=()):
    assert set(a) == set(b)
    return {name: float(np.abs(a[name] - b[name]).max()) for name in a
            if not name.startswith(skip)}


def test_two_workers_hold_the_same_weights_ema_and_batch_norm_statistics(runs):
    for setup in ('two_workers', 'two_workers_no_bn'):
        rank0, rank1 = runs[setup + '-0'], runs[setup + '-1']
        assert rank0['global_step'] == {'two_workers': 5, 'two_workers_no_bn': 3}[setup] * 16
        assert max(differences(rank0, rank1).values()) <= 1e-6
    names = set(runs['two_workers-0'])
    assert {'classify/batch_normalization/moving_variance',
            'classify/dense/kernel/ExponentialMovingAverage'} <= names


def test_two_workers_train_as_one_process_with_two_replicas(runs):
    gaps = differences(runs['two_workers-0'], runs['two_replicas-0'], BIAS_BEFORE_BATCH_NORM)
    assert max(gaps.values()) <= 1e-5, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]


def test_without_batch_norm_two_workers_of_batch_b_train_as_one_of_batch_2b(runs):
    gaps = differences(runs['two_workers_no_bn-0'], runs['one_worker_no_bn-0'])
    assert max(gaps.values()) <= 1e-5, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]


TINY = ['--arch=smallconv', '--filters=8', '--batch=8', '--report_kimg=1', '--save_kimg=1',
        '--tune_kimg=0', '--eval_batch=16', '--device=cpu', '--seed=1', '--ema=0.9',
        '--w_match=1', '--warmup_kimg=1']


def test_a_killed_worker_stops_the_run_and_the_same_command_resumes(tmp_path):
    root = str(tmp_path / 'data')
    dataset = tiny_data.make_ssl_dataset(root) + '-12'
    train_dir = str(tmp_path / 'runs')
    command = [sys.executable, LAUNCH, '--workers=2', '--log_dir=' + str(tmp_path / 'logs'),
               os.path.join(ROOT, 'realmix.py'), '--dataset=' + dataset,
               '--train_dir=' + train_dir, '--train_kimg=3'] + TINY
    env = dict(ENV, ML_DATA=root)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True)
    deadline = time.time() + 240
    while not glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'checkpoint')):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    rank1 = [pid for pid in _pids_running('realmix.py', train_dir) if _rank_of(pid) == 1]
    assert len(rank1) == 1
    os.kill(rank1[0], 9)
    _, err = first.communicate(timeout=120)
    # The launcher's line comes last; rank 0, whose output it streams, may have said first in
    # one line of its own that a worker is gone.
    assert first.returncode == 1 and 'Traceback' not in err, err
    assert err.splitlines()[-1].startswith('error: worker 1 exited with status -9'), err
    assert 'stopped the other workers' in err.splitlines()[-1]
    assert all(line.startswith('error: training stopped: another of the 2 workers is gone')
               for line in err.splitlines()[:-1] if line.startswith('error: ')), err
    second = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, timeout=300)
    assert second.returncode == 0, second.stdout
    assert 'Resumed from' in second.stdout and 'kimg 3' in second.stdout
    results = glob.glob(os.path.join(train_dir, '*', '*', 'result.txt'))
    assert len(results) == 1  # rank 0 alone writes
    folder = os.path.join(os.path.dirname(results[0]), 'tf')
    for path in run_folder.checkpoints_newest_first(folder):  # the step is read after its update
        assert int(tf.train.load_variable(path, 'global_step')) == int(path.rsplit('-', 1)[1])


def _pids_running(*words):
    """Processes whose command line holds every one of `words` (from /proc)."""
    found = []
    for entry in os.listdir('/proc'):
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                command = f.read().decode(errors='replace')
        except (IOError, OSError):
            continue
        if entry.isdigit() and all(word in command for word in words):
            found.append(int(entry))
    return found


def _rank_of(pid):
    with open('/proc/%d/environ' % pid, 'rb') as f:
        env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
    config = env.get(b'TF_CONFIG', b'')
    return int(config.split(b'"index": ')[1].split(b'}')[0]) if config else -1


@pytest.mark.parametrize('environ,words', [
    (dict(RANK_SIZE='8', RANK_ID='0'), 'RANK_SIZE=8 needs RANK_TABLE_FILE'),
    (dict(RANK_SIZE='2', RANK_ID='2', RANK_TABLE_FILE=__file__), 'RANK_ID=2 is outside [0, RANK_SIZE=2)'),
    (dict(RANK_SIZE='two'), "RANK_SIZE='two' is not an integer"),
])
def test_a_bad_ascend_rank_environment_is_one_clear_error(environ, words):
    with pytest.raises(UserError, match=words.replace('[', r'\[').replace('(', r'\(')
                       .replace(')', r'\)')):
        npu_config.cluster_from_env('npu', environ=environ)


@pytest.mark.parametrize('tf_config,words', [
    ('{"cluster": {"worker": ["a:1", "b:2"]}', 'TF_CONFIG does not parse'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     'task worker 2 is not one of the 2 workers'),
])
def test_a_bad_tf_config_is_one_clear_error(tf_config, words):
    with pytest.raises(UserError, match=words):
        npu_config.cluster_from_env('cpu', environ=dict(TF_CONFIG=tf_config))


def test_cluster_from_the_environment(tmp_path):
    path = tmp_path / 'rank_table.json'  # a version 1.0 table of one server with 8 devices
    path.write_text(json.dumps({'version': '1.0', 'server_count': '1', 'status': 'completed',
                                'server_list': [{'server_id': '10.0.0.1', 'device': [
                                    {'device_id': str(d), 'device_ip': '192.168.1.%d' % d,
                                     'rank_id': str(d)} for d in range(8)]}]}))
    table = dict(RANK_SIZE='8', RANK_ID='3', RANK_TABLE_FILE=str(path))
    assert npu_config.cluster_from_env('npu', environ=table) == ('hccl', 8, 3, 1)
    config = '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'
    cluster = npu_config.cluster_from_env('gpu', environ=dict(TF_CONFIG=config))
    assert cluster == ('multiworker', 2, 1, 1) and cluster.replicas == 2 and not cluster.chief
    assert npu_config.cluster_from_env('cpu', 2, environ={}) == ('mirrored', 1, 0, 2)
    assert npu_config.cluster_from_env('cpu', environ=table) == npu_config.SINGLE  # not Ascend
    with pytest.raises(UserError, match='--replicas is for CPU/GPU'):
        npu_config.cluster_from_env('npu', 2, environ={})


def test_a_workers_step_sends_one_packed_collective(runs):
    """Gradients, batch-norm moments and the logged scalars (losses, stop vote) cross in one
    collective: none per variable, none for weight decay or the EMA (the weights are equal after
    the gradients), and with one a step its order is the same on every worker."""
    step = runs['two_workers-0.step']
    [packed] = step['collectives']
    assert packed['size'] > step['trainable'] and step['moments_packed'] and step['scalars_packed']
    assert runs['two_workers-1.step']['collectives'] == step['collectives']


def test_sigterm_to_one_worker_stops_both_after_the_same_step_and_rank_0_saves(tmp_path):
    root = str(tmp_path / 'data')
    dataset = tiny_data.make_ssl_dataset(root) + '-12'
    train_dir, logs = str(tmp_path / 'runs'), str(tmp_path / 'logs')
    command = [sys.executable, LAUNCH, '--workers=2', '--log_dir=' + logs,
               os.path.join(ROOT, 'realmix.py'), '--dataset=' + dataset,
               '--train_dir=' + train_dir, '--train_kimg=100'] + TINY
    launcher = subprocess.Popen(command, env=dict(ENV, ML_DATA=root), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)
    deadline = time.time() + 240
    while not glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'checkpoint')):
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()
        time.sleep(0.1)
    [rank1] = [pid for pid in _pids_running('realmix.py', train_dir) if _rank_of(pid) == 1]
    os.kill(rank1, 15)
    out, err = launcher.communicate(timeout=180)
    assert launcher.returncode == 143 and 'Traceback' not in err, (out, err)
    with open(os.path.join(logs, 'worker-1.log')) as f:
        asked = re.search(r'^Stopped by SIGTERM at (\d+) images', f.read(), re.M)
    told = re.search(r'^Stopped by the stop request of another rank at (\d+) images .*saved (\S+);',
                     out, re.M)
    assert asked and told and asked.group(1) == told.group(1), (out, err)
    assert int(tf.train.load_variable(told.group(2), 'global_step')) == int(told.group(1))


def test_workers_resuming_from_different_checkpoints_stop_with_one_line(tmp_path):
    """Each worker reads its own run folder (as on machines with their own disks): rank 0 holds a
    checkpoint of 1024 images, rank 1 none. Every worker stops at the start with one line."""
    root = str(tmp_path / 'data')
    dataset = tiny_data.make_ssl_dataset(root) + '-12'
    args = ['--dataset=' + dataset] + TINY
    env = dict(ENV, ML_DATA=root)
    first = subprocess.run([sys.executable, os.path.join(ROOT, 'realmix.py'), '--train_kimg=1',
                            '--train_dir=' + str(tmp_path / 'rank-0')] + args, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert first.returncode == 0, first.stdout
    wrapper = tmp_path / 'own_folder.py'  # realmix.py with --train_dir=rank-<its rank>
    wrapper.write_text(
        'import json, os, sys\n'
        'rank = json.loads(os.environ["TF_CONFIG"])["task"]["index"]\n'
        'os.execv(sys.executable, [sys.executable, %r] + sys.argv[1:] + '
        '["--train_dir=%s/rank-%%d" %% rank])\n' % (os.path.join(ROOT, 'realmix.py'), tmp_path))
    launcher = subprocess.run([sys.executable, LAUNCH, '--workers=2', '--log_dir=' + str(tmp_path / 'logs'),
                               str(wrapper), '--train_kimg=2'] + args, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=240)
    assert launcher.returncode == 1 and 'Traceback' not in launcher.stderr, launcher.stderr
    with open(str(tmp_path / 'logs' / 'worker-1.log')) as f:
        rank1 = f.read()
    for rank, text, step in ((0, launcher.stderr, 1024), (1, rank1, 0)):
        assert ('error: the 2 workers start from different steps (this one, rank %d, from %d images; '
                'the mean is 512)' % (rank, step)) in text, text
