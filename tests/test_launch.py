"""scripts/launch.py: the cluster environment of each worker (tf, hccl), output and logs, stopping
every worker when one fails or the launcher is signalled, and one-line errors for bad input. The
workers are tiny stand-in scripts, not realmix.py."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, assert_one_line_error

LAUNCH = os.path.join(ROOT, 'scripts', 'launch.py')

# Every stand-in worker starts with this: its rank from TF_CONFIG or RANK_ID, its environment and
# pid written to OUT/rank-<r>.json (the folder of the script).
PRELUDE = '''
import json, os, sys, time
TF = json.loads(os.environ['TF_CONFIG']) if 'TF_CONFIG' in os.environ else None
RANK = TF['task']['index'] if TF else int(os.environ['RANK_ID'])
OUT = os.path.dirname(os.path.abspath(__file__))
KEYS = ('TF_CONFIG', 'RANK_TABLE_FILE', 'RANK_SIZE', 'RANK_ID', 'DEVICE_ID', 'ASCEND_DEVICE_ID',
        'JOB_ID', 'PYTHONUNBUFFERED')
record = {'pid': os.getpid(), 'argv': sys.argv[1:], 'cwd': os.getcwd(),
          'env': {k: os.environ[k] for k in KEYS if k in os.environ}}
with open(os.path.join(OUT, 'rank-%d.json.tmp' % RANK), 'w') as f:
    json.dump(record, f)
os.rename(os.path.join(OUT, 'rank-%d.json.tmp' % RANK), os.path.join(OUT, 'rank-%d.json' % RANK))
print('hello from rank %d' % RANK)
print('stderr of rank %d' % RANK, file=sys.stderr)
'''


def worker(tmp_path, body=''):
    path = tmp_path / 'worker.py'
    path.write_text(PRELUDE + body)
    return str(path)


def launch(tmp_path, *args, **env):
    environ = dict(os.environ)
    environ.update(env)
    start = time.time()
    result = subprocess.run([sys.executable, LAUNCH] + list(args), cwd=str(tmp_path), env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    return result, time.time() - start


def records(tmp_path, n):
    return [json.loads((tmp_path / ('rank-%d.json' % r)).read_text()) for r in range(n)]


def assert_gone(pid):
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def rank_table(tmp_path, device_of_rank):
    """A version 1.0 HCCL rank table, its entries listed by descending rank."""
    devices = [{'device_id': str(d), 'device_ip': '192.168.100.%d' % (100 + d), 'rank_id': str(r)}
               for r, d in sorted(device_of_rank.items(), reverse=True)]
    table = {'version': '1.0', 'server_count': '1', 'status': 'completed',
             'server_list': [{'server_id': '10.0.0.1', 'device': devices}]}
    path = tmp_path / 'rank_table.json'
    path.write_text(json.dumps(table))
    return str(path)


def test_tf_two_workers(tmp_path):
    script = worker(tmp_path)
    logs = tmp_path / 'logs'
    result, _ = launch(tmp_path, '--workers=2', '--log_dir=%s' % logs, script, '--dataset=x', 'pos',
                       RANK_SIZE='8', RANK_ID='5', RANK_TABLE_FILE='/nonexistent')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == \
        'launch: 2 workers (tf), logs of ranks 1..1 in %s' % logs
    assert 'hello from rank 0' in result.stdout and 'stderr of rank 0' in result.stderr
    assert 'rank 1' not in result.stdout + result.stderr
    assert sorted(os.listdir(str(logs))) == ['worker-1.log']
    log = (logs / 'worker-1.log').read_text()
    assert 'hello from rank 1' in log and 'stderr of rank 1' in log
    configs = []
    for rank, rec in enumerate(records(tmp_path, 2)):
        assert rec['argv'] == ['--dataset=x', 'pos'] and rec['cwd'] == str(tmp_path)
        assert sorted(rec['env']) == ['PYTHONUNBUFFERED', 'TF_CONFIG']  # no RANK_*
        assert rec['env']['PYTHONUNBUFFERED'] == '1'
        config = json.loads(rec['env']['TF_CONFIG'])
        assert config['task'] == {'type': 'worker', 'index': rank}
        configs.append(config)
    workers = configs[0]['cluster']['worker']
    assert configs[1]['cluster'] == {'worker': workers} and len(workers) == 2
    assert all(w.startswith('127.0.0.1:') for w in workers) and len(set(workers)) == 2


def test_one_worker(tmp_path):
    result, _ = launch(tmp_path, '--workers=1', '--', worker(tmp_path), '--workers=7')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('launch: 1 workers (tf)')
    rec = records(tmp_path, 1)[0]
    assert rec['argv'] == ['--workers=7']
    config = json.loads(rec['env']['TF_CONFIG'])
    assert len(config['cluster']['worker']) == 1 and config['task']['index'] == 0


def test_hccl_two_devices(tmp_path):
    table = rank_table(tmp_path, {0: 6, 1: 2})
    result, _ = launch(tmp_path, '--workers=2', '--engine=hccl', '--rank_table=rank_table.json',
                       worker(tmp_path), TF_CONFIG='{"bogus": 1}', JOB_ID='')
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith('launch: 2 workers (hccl), logs of ranks 1..1 in ')
    logs = first.split(' in ', 1)[1]  # the default: a new temporary folder
    try:
        assert os.path.basename(logs).startswith('launch-')
        assert os.listdir(logs) == ['worker-1.log']
    finally:
        shutil.rmtree(logs)
    for rank, rec in enumerate(records(tmp_path, 2)):
        env = rec['env']
        assert 'TF_CONFIG' not in env
        assert env['RANK_TABLE_FILE'] == table and env['RANK_SIZE'] == '2'
        assert env['RANK_ID'] == str(rank) and env['JOB_ID']
        # Logical ids, as in a container showing chips 2 and 6 only: 0 is chip 2, 1 is chip 6.
        assert env['DEVICE_ID'] == env['ASCEND_DEVICE_ID'] == ('1', '0')[rank]


def test_hccl_device_ids_are_logical_as_huawei_s_launch_scripts_set_them(tmp_path):
    rank_table(tmp_path, {0: 4, 1: 5})  # the last chips of a server, as a container shows them
    result, _ = launch(tmp_path, '--workers=2', '--engine=hccl', '--rank_table=rank_table.json',
                       '--log_dir=logs', worker(tmp_path))
    assert result.returncode == 0, result.stderr
    assert [rec['env']['ASCEND_DEVICE_ID'] for rec in records(tmp_path, 2)] == ['0', '1']


def test_failing_worker_stops_the_others(tmp_path):
    script = worker(tmp_path, 'time.sleep(60 if RANK == 0 else 0.5)\nsys.exit(3)\n')
    result, seconds = launch(tmp_path, '--workers', '2', '--log_dir', 'logs', script)
    line = assert_one_line_error(result.returncode, result.stderr, 'worker 1 ',
                                 'status 3;', 'stopped the other workers')
    assert line.endswith('its log: %s' % (tmp_path / 'logs' / 'worker-1.log'))
    assert seconds < 20
    assert_gone(records(tmp_path, 2)[0]['pid'])


def test_worker_killed_by_signal(tmp_path):
    # rank 0 dies of SIGKILL; rank 1 ignores SIGTERM, so the launcher must SIGKILL it too.
    script = worker(tmp_path, 'import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
                              'time.sleep(0.5)\n'
                              'os.kill(os.getpid(), 9) if RANK == 0 else time.sleep(60)\n')
    result, seconds = launch(tmp_path, '--workers=2', '--log_dir=logs', script)
    line = assert_one_line_error(result.returncode, result.stderr, 'worker 0 ',
                                 'status -9 (signal SIGKILL)', 'its output is above')
    assert 'log:' not in line
    assert seconds < 20
    assert_gone(records(tmp_path, 2)[1]['pid'])


@contextlib.contextmanager
def two_workers_started(tmp_path, script):
    """The launcher running 2 workers of `script`, once both have started; killed if still running."""
    proc = subprocess.Popen([sys.executable, LAUNCH, '--workers=2', '--log_dir=logs', script],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        deadline = time.time() + 30
        while not all((tmp_path / ('rank-%d.json' % r)).exists() for r in range(2)):
            assert time.time() < deadline and proc.poll() is None, proc.poll()
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_all_workers(tmp_path, sig):
    with two_workers_started(tmp_path, worker(tmp_path, 'time.sleep(60)\n')) as proc:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    assert_one_line_error(proc.returncode, err, signal.Signals(sig).name, 'stopped all 2 workers')
    for rec in records(tmp_path, 2):
        assert_gone(rec['pid'])


# A stand-in of realmix.py's saved stop: on SIGTERM (or once another rank saved: the vote) it takes
# a second to save, writes saved-<rank>, and exits 128 + SIGTERM.
SAVING_WORKER = '''
import signal
asked = []
signal.signal(signal.SIGTERM, lambda num, frame: asked.append(num))
while not asked and not any(os.path.exists(os.path.join(OUT, 'saved-%d' % r)) for r in range(2)):
    time.sleep(0.05)
time.sleep(1.0)
open(os.path.join(OUT, 'saved-%d' % RANK), 'w').close()
sys.exit(128 + signal.SIGTERM)
'''


@pytest.mark.parametrize('target', ['launcher', 'rank 1'])
def test_a_saved_stop_lets_every_worker_save_and_exits_with_its_status(tmp_path, target):
    with two_workers_started(tmp_path, worker(tmp_path, SAVING_WORKER)) as proc:
        if target == 'launcher':
            proc.send_signal(signal.SIGTERM)
        else:
            os.kill(records(tmp_path, 2)[1]['pid'], signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert 'error:' not in err and out.splitlines()[-1].startswith(
        'launch: the workers stopped on request after saving a checkpoint (exit status 143)')
    assert (tmp_path / 'saved-0').exists() and (tmp_path / 'saved-1').exists()  # none killed


def test_bad_input(tmp_path):
    script = worker(tmp_path)
    (tmp_path / 'broken.json').write_text('{"server_list": [')
    cases = [
        (['--workers=2', '--engine=hccl', script], ['--engine=hccl', '--rank_table']),
        (['--workers=2', '--engine=hccl', '--rank_table=' + rank_table(tmp_path, {
            r: r for r in range(8)}), script], ['8 devices', '--workers=2']),
        (['--workers=2', '--engine=hccl', '--rank_table=missing.json', script], ['missing.json']),
        (['--workers=2', '--engine=hccl', '--rank_table=broken.json', script], ['broken.json']),
        (['--workers=0', script], ['--workers', '0']),
        (['--workers=2'], ['SCRIPT']),
        (['--workers=2', 'nope.py', '--x=1'], ['nope.py']),
    ]
    for args, words in cases:
        result, _ = launch(tmp_path, *args)
        assert_one_line_error(result.returncode, result.stderr, *words)
        assert not (tmp_path / 'rank-0.json').exists(), args  # no worker started

