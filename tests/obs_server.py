"""Pytest fixture `obs_server`: a fresh moto S3 server on 127.0.0.1 that stands in for OBS.

Use it from another test file with `from obs_server import obs_server  # noqa: F401`; the fixture sets
OBS_ENDPOINT, OBS_ACCESS_KEY_ID and OBS_SECRET_ACCESS_KEY in os.environ, and `server.env` holds the
environment for subprocesses. The server process is killed when the test ends, passed or failed.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

START_TIMEOUT_S = 30


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ObsServer(object):
    """A running moto server plus helpers to fill and read its buckets through the OBS SDK."""

    def __init__(self, port):
        self.endpoint = 'http://127.0.0.1:%d' % port
        self.access_key_id = 'test-key-id'
        self.secret_access_key = 'test-secret-%s' % os.urandom(8).hex()
        self.env = dict(os.environ, OBS_ENDPOINT=self.endpoint, OBS_ACCESS_KEY_ID=self.access_key_id,
                        OBS_SECRET_ACCESS_KEY=self.secret_access_key)
        self.env.pop('OBS_SIGNATURE', None)

    def client(self):
        """An SDK client with this server's keys."""
        from obs import ObsClient
        return ObsClient(access_key_id=self.access_key_id, secret_access_key=self.secret_access_key,
                         server=self.endpoint)

    def _ok(self, resp, what):
        assert resp.status < 300, '%s: %s %s' % (what, resp.status, resp.errorCode)
        return resp

    def make_bucket(self, bucket):
        self._ok(self.client().createBucket(bucket), 'create ' + bucket)

    def put_tree(self, local_dir, bucket, prefix):
        """Upload every file under `local_dir` to obs://bucket/prefix/..."""
        client = self.client()
        for folder, _, names in os.walk(local_dir):
            for name in names:
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, local_dir).replace(os.sep, '/')
                self._ok(client.putFile(bucket, prefix.rstrip('/') + '/' + rel, path), 'put ' + rel)

    def read_tree(self, bucket, prefix):
        """{relative/key: bytes} for the objects under obs://bucket/prefix/."""
        client, out, marker = self.client(), {}, None
        key_prefix = prefix.rstrip('/') + '/'
        while True:
            body = self._ok(client.listObjects(bucket, prefix=key_prefix, marker=marker), 'list').body
            for item in body.contents:
                resp = self._ok(client.getObject(bucket, item.key, loadStreamInMemory=True), 'get')
                out[item.key[len(key_prefix):]] = resp.body.buffer or b''
            if not body.is_truncated:
                return out
            marker = body.next_marker or body.contents[-1].key

    def reject_unknown_keys(self):
        """Make the server check keys from now on; return an environment whose keys it does not know.

        moto then answers 403 InvalidAccessKeyId. It only parses SigV4 headers, so the env selects v4.
        """
        request = urllib.request.Request(self.endpoint + '/moto-api/reset-auth', data=b'0', method='POST',
                                         headers={'Content-Type': 'text/plain'})
        urllib.request.urlopen(request, timeout=10).read()
        return dict(self.env, OBS_ACCESS_KEY_ID='unknown-key-id', OBS_SIGNATURE='v4',
                    OBS_SECRET_ACCESS_KEY='wrong-secret-%s' % os.urandom(8).hex())


def _wait_until_up(proc, endpoint):
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(endpoint + '/moto-api/data.json', timeout=1).read()
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    return False


def _start_moto():
    """Start `python -m moto.server` on a free port; retry if another process took the port first."""
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _wait_until_up(proc, 'http://127.0.0.1:%d' % port):
            return proc, port
        _stop(proc)
    raise RuntimeError('moto server did not start')


def _stop(proc):
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def obs_server(monkeypatch):
    """A fresh moto server; OBS_* variables point at it for the duration of the test."""
    proc, port = _start_moto()
    try:
        server = ObsServer(port)
        for name in ('OBS_ENDPOINT', 'OBS_ACCESS_KEY_ID', 'OBS_SECRET_ACCESS_KEY'):
            monkeypatch.setenv(name, server.env[name])
        monkeypatch.delenv('OBS_SIGNATURE', raising=False)
        yield server
    finally:
        _stop(proc)
