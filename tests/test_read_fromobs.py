"""read_fromobs.py: staging folders between OBS (a moto server here) and local disk, resumably."""

import os
import signal
import subprocess
import sys
import time
import types

import pytest

import conftest

from obs_server import free_port, obs_server  # noqa: F401  (pytest fixture)
import read_fromobs
from read_fromobs import CopyStats, ObsFolder, copy_tree, sync_up
from libml.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'read_fromobs.py')
OBS_VARS = ('OBS_ENDPOINT', 'OBS_ACCESS_KEY_ID', 'OBS_SECRET_ACCESS_KEY', 'OBS_SIGNATURE')

# Runs read_fromobs.py as __main__ with every download slowed down and leaving a partial temporary
# file first, the way a transfer cut off by a kill does.
SLOW_LAUNCHER = '''
import os, runpy, sys, time
import obs
original = obs.ObsClient.getObject
calls = []
def slow_get(self, bucket, key, downloadPath=None, **kwargs):
    # The fourth download stalls half-written, so the test's kill always lands mid-transfer.
    calls.append(key)
    with open(downloadPath, 'wb') as f:
        f.write(b'partial')
    time.sleep(60 if len(calls) == 4 else 0.1)
    return original(self, bucket, key, downloadPath=downloadPath, **kwargs)
obs.ObsClient.getObject = slow_get
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name='__main__')
'''


def make_tree(root, n_files=4):
    """A small folder with nested files, an empty file and binary content; returns {rel: bytes}."""
    files = {'empty.txt': b'', 'sub/notes.txt': b'hello obs\n', 'sub/deep/blob.bin': os.urandom(20000)}
    for i in range(n_files - len(files)):
        files['part-%02d.bin' % i] = os.urandom(3000 + i)
    for rel, data in files.items():
        path = os.path.join(root, *rel.split('/'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
    return files


def read_local_tree(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root).replace(os.sep, '/')] = f.read()
    return out


def temp_files(root):
    return [name for _, _, names in os.walk(root) for name in names if read_fromobs.TEMP_NAME.match(name)]


def finished_files(root):
    return [name for _, _, names in os.walk(root) for name in names if not read_fromobs.TEMP_NAME.match(name)]


def run_cli(env, *args):
    return subprocess.run([sys.executable, SCRIPT] + list(args), env=env, capture_output=True, text=True,
                          timeout=60)


def assert_secret_hidden(proc, secret):
    assert secret not in proc.stdout and secret not in proc.stderr


def assert_one_line_error(proc, *words):
    conftest.assert_one_line_error(proc.returncode, proc.stderr, *words)


@pytest.fixture
def staged(obs_server, tmp_path):  # noqa: F811
    """A bucket `data-bkt` holding a small tree under prefix `ds`; yields (server, files)."""
    files = make_tree(str(tmp_path / 'src'))
    obs_server.make_bucket('data-bkt')
    obs_server.put_tree(str(tmp_path / 'src'), 'data-bkt', 'ds')
    return obs_server, files


def test_download_copies_every_byte_and_hides_the_secret(staged, tmp_path):
    server, files = staged
    dst = str(tmp_path / 'out')
    proc = run_cli(server.env, '--src=obs://data-bkt/ds', '--dst=' + dst)
    assert proc.returncode == 0, proc.stderr
    assert read_local_tree(dst) == files
    assert '4 files to copy' in proc.stderr
    assert_secret_hidden(proc, server.secret_access_key)


def test_the_stand_in_answers_every_v2_signature_as_s3(staged):
    """moto guessed the service from a V2/OBS signature as if it were SigV4; one with four "/"
    made it answer HTTP 500 (CI failed on it twice): the stand-in must not fail a real client."""
    import urllib.error
    import urllib.request
    server, _ = staged
    for signature in ('abcdefghijklmnopqrstuvwxyz0=', 'ab/cd/ef/gh/ijklmnopqrstuvwx='):
        request = urllib.request.Request(server.endpoint + '/data-bkt/ds/missing', headers={
            'Authorization': 'AWS %s:%s' % (server.access_key_id, signature)})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=10)
        assert answer.value.code == 404, signature  # NoSuchKey, from moto's S3


def test_rerun_skips_present_files_and_refetches_wrong_sizes(staged, tmp_path):
    _, files = staged
    dst = str(tmp_path / 'out')
    assert copy_tree('obs://data-bkt/ds/', dst) == CopyStats(4, 0, sum(len(d) for d in files.values()))
    assert copy_tree('obs://data-bkt/ds', dst) == CopyStats(0, 4, 0)
    with open(os.path.join(dst, 'sub', 'notes.txt'), 'wb') as f:
        f.write(b'cut')  # as if an older copy stopped part-way
    assert copy_tree('obs://data-bkt/ds', dst).copied == 1
    assert read_local_tree(dst) == files


def test_killed_download_resumes_and_leaves_no_temporary_files(obs_server, tmp_path):  # noqa: F811
    files = make_tree(str(tmp_path / 'src'), n_files=12)
    obs_server.make_bucket('data-bkt')
    obs_server.put_tree(str(tmp_path / 'src'), 'data-bkt', 'ds')
    dst = str(tmp_path / 'out')
    cmd = [sys.executable, '-c', SLOW_LAUNCHER, SCRIPT, '--src=obs://data-bkt/ds', '--dst=' + dst]
    proc = subprocess.Popen(cmd, env=obs_server.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while len(finished_files(dst)) < 3 or not temp_files(dst):
            assert proc.poll() is None and time.time() < deadline, 'copy ended before it could be killed'
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert temp_files(dst), 'the kill should have caught a file mid-transfer'
    assert len(finished_files(dst)) < len(files)

    rerun = run_cli(obs_server.env, '--src=obs://data-bkt/ds', '--dst=' + dst)
    assert rerun.returncode == 0, rerun.stderr
    assert read_local_tree(dst) == files
    assert temp_files(dst) == []


def test_upload_then_sync_up_sends_only_new_and_changed_files(obs_server, tmp_path):  # noqa: F811
    src = str(tmp_path / 'train_dir')
    files = make_tree(src)
    obs_server.make_bucket('out-bkt')
    proc = run_cli(obs_server.env, '--src=' + src, '--dst=obs://out-bkt/run1')
    assert proc.returncode == 0, proc.stderr
    assert obs_server.read_tree('out-bkt', 'run1') == files
    assert_secret_hidden(proc, obs_server.secret_access_key)

    assert sync_up(src, 'obs://out-bkt/run1').copied == 0
    with open(os.path.join(src, 'sub', 'notes.txt'), 'wb') as f:
        f.write(b'HELLO OBS\n')  # same size, new content, like a rewritten `checkpoint` file
    with open(os.path.join(src, 'new.txt'), 'wb') as f:
        f.write(b'new')
    assert sync_up(src, 'obs://out-bkt/run1').copied == 2
    assert obs_server.read_tree('out-bkt', 'run1') == read_local_tree(src)


def test_local_to_local_needs_no_obs_settings(tmp_path):
    files = make_tree(str(tmp_path / 'a'))
    env = {k: v for k, v in os.environ.items() if k not in OBS_VARS}
    proc = run_cli(env, '--src=' + str(tmp_path / 'a'), '--dst=' + str(tmp_path / 'b'))
    assert proc.returncode == 0, proc.stderr
    assert read_local_tree(str(tmp_path / 'b')) == files
    assert copy_tree(str(tmp_path / 'a'), str(tmp_path / 'b')) == CopyStats(0, 4, 0)


def test_listing_follows_pages(staged):
    with ObsFolder.open('obs://data-bkt/ds') as folder:
        assert sorted(folder.files(page_size=3)) == sorted(staged[1])


def assert_fails_clearly(env, src, dst, words):
    """The command exits non-zero within seconds with one `error:` line, writes nothing, hides the secret."""
    started = time.time()
    proc = run_cli(env, '--src=' + src, '--dst=' + dst)
    assert_one_line_error(proc, *words)
    assert time.time() - started < 20  # seconds, not the minutes of default SDK retries
    assert not os.path.exists(dst)
    assert_secret_hidden(proc, env['OBS_SECRET_ACCESS_KEY'])


@pytest.mark.parametrize('case, src, words', [
    ('missing bucket', 'obs://no-such-bkt/ds', ['bucket no-such-bkt does not exist']),
    ('missing prefix', 'obs://data-bkt/nothing-here', ['no objects under obs://data-bkt/nothing-here/']),
    ('wrong keys', 'obs://data-bkt/ds', ['rejected the access keys', 'InvalidAccessKeyId']),
])
def test_server_side_failures_give_one_line(staged, tmp_path, case, src, words):
    server, _ = staged
    env = server.reject_unknown_keys() if case == 'wrong keys' else server.env
    assert_fails_clearly(env, src, str(tmp_path / 'out'), words)


@pytest.mark.parametrize('case, src, words', [
    ('unreachable endpoint', 'obs://data-bkt/ds', ['cannot reach OBS endpoint', 'OBS_ENDPOINT']),
    ('missing variable', 'obs://data-bkt/ds', ['OBS_ACCESS_KEY_ID not set']),
    ('missing local source', 'no/such/folder', ['source folder no/such/folder does not exist']),
])
def test_local_failures_give_one_line(tmp_path, case, src, words):
    env = dict(os.environ, OBS_ENDPOINT='http://127.0.0.1:%d' % free_port(), OBS_ACCESS_KEY_ID='some-key-id',
               OBS_SECRET_ACCESS_KEY='some-secret-%s' % os.urandom(8).hex())  # a closed port: nothing answers
    if case == 'missing variable':
        del env['OBS_ACCESS_KEY_ID']
    assert_fails_clearly(env, src, str(tmp_path / 'out'), words)


def test_signature_mismatch_means_wrong_keys_and_replies_never_echo_the_secret():
    folder = ObsFolder(client=None, url='obs://b/p', endpoint='https://obs.example.com', secrets=['s3cr3t'])
    reply = types.SimpleNamespace(status=403, errorCode='SignatureDoesNotMatch', errorMessage='')
    with pytest.raises(UserError, match='rejected the access keys.*OBS_SECRET_ACCESS_KEY'):
        folder._call('listing', lambda: reply)
    echo = types.SimpleNamespace(status=500, errorCode=None, errorMessage='bad request for key s3cr3t')
    with pytest.raises(UserError, match=r'HTTP 500 \(no error code\).*key \*\*\*$'):
        folder._call('listing', lambda: echo)


def test_moxing_does_the_copy_on_modelarts(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType('moxing')
    fake.file = types.SimpleNamespace(copy_parallel=lambda src, dst: calls.append((src, dst)))
    monkeypatch.setitem(sys.modules, 'moxing', fake)
    for name in OBS_VARS:
        monkeypatch.delenv(name, raising=False)  # moxing brings its own credentials
    copy_tree('obs://bkt/data', str(tmp_path / 'data'))
    assert calls == [('obs://bkt/data', str(tmp_path / 'data'))]


def test_obs_to_obs_and_bad_urls_are_refused():
    with pytest.raises(UserError, match='one side must be a local folder'):
        copy_tree('obs://a/x', 'obs://b/y')
    with pytest.raises(UserError, match='names no bucket'):
        read_fromobs.split_obs_url('obs:///x')


def test_destination_that_is_a_file_is_refused(tmp_path):
    make_tree(str(tmp_path / 'a'))
    (tmp_path / 'b').write_text('a file where the copy wants a folder')
    with pytest.raises(UserError, match='destination .*b is a file, not a folder'):
        copy_tree(str(tmp_path / 'a'), str(tmp_path / 'b'))


def test_moxing_sync_up_sends_only_files_changed_since_the_last_sync(monkeypatch, tmp_path):
    copied = []
    fake = types.ModuleType('moxing')
    fake.file = types.SimpleNamespace(copy=lambda src, dst: copied.append(dst))
    monkeypatch.setitem(sys.modules, 'moxing', fake)
    run = tmp_path / 'run'
    (run / 'tf').mkdir(parents=True)
    (run / 'tf' / 'model.ckpt-1.data').write_bytes(b'x' * 100)
    (run / 'tf' / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-1"')
    read_fromobs.sync_up(str(run), 'obs://bkt/out/')
    assert sorted(copied) == ['obs://bkt/out/tf/checkpoint', 'obs://bkt/out/tf/model.ckpt-1.data']
    del copied[:]
    (run / 'tf' / 'model.ckpt-2.data').write_bytes(b'y' * 100)
    (run / 'tf' / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-2"')
    os.utime(str(run / 'tf' / 'checkpoint'), (1, 1))  # same size, new content: the mtime tells
    read_fromobs.sync_up(str(run), 'obs://bkt/out')
    assert sorted(copied) == ['obs://bkt/out/tf/checkpoint', 'obs://bkt/out/tf/model.ckpt-2.data']
