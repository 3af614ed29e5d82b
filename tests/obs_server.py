"""Pytest fixture `obs_server`: a fresh moto S3 server on 127.0.0.1 that stands in for OBS.

Use it from another test file with `from obs_server import obs_server  # noqa: F401`; the fixture sets
OBS_ENDPOINT, OBS_ACCESS_KEY_ID and OBS_SECRET_ACCESS_KEY in os.environ, and `server.env` holds the
environment for subprocesses. The server process is killed when the test ends, passed or failed; the
tracebacks in its log (the causes of HTTP 500 answers) are printed then, shown with a failing test.
"""

import os
import socket
import subprocess
import sys
import select
import urllib.request

import pytest

START_TIMEOUT_S = 60


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


# Runs in the server's own process: bind port 0, so the kernel hands out a port no one else holds
# (picking a "free" port first and binding it later races with every other process of the suite).
# Every request goes to S3: moto otherwise guesses the service from the Authorization header as if
# it were SigV4, and a V2/OBS signature ("AWS key:base64") holding exactly four "/" splits into a
# bogus service name, which moto answers with HTTP 500 (KeyError: None): about one request in a
# thousand, so an OBS test now and then.
SERVER_MAIN = '''
import threading
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
DomainDispatcherApplication.infer_service_region_host = lambda *args: "s3.us-east-1.amazonaws.com"
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server._server.server_port, flush=True)
threading.Event().wait()
'''


def _start_moto(log_path):
    """Start a moto server process that logs to `log_path`; return it and the port it listens on."""
    log = open(log_path, 'w')
    proc = subprocess.Popen([sys.executable, '-c', SERVER_MAIN], stdout=subprocess.PIPE, stderr=log,
                            text=True)
    log.close()
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline() if ready else ''
    if not line.strip().isdigit():
        _stop(proc)
        with open(log_path) as f:
            raise RuntimeError('moto server did not start:\n' + f.read()[-2000:])
    return proc, int(line)


def _stop(proc):
    proc.kill()
    proc.wait(timeout=10)
    proc.stdout.close()


def _server_errors(log_path):
    """The tracebacks in the server's log: a 500 answer has its cause there."""
    with open(log_path) as f:
        text = f.read()
    return text[text.index('Traceback'):] if 'Traceback' in text else ''


@pytest.fixture
def obs_server(monkeypatch, tmp_path_factory):
    """A fresh moto server; OBS_* variables point at it for the duration of the test."""
    log_path = str(tmp_path_factory.mktemp('moto') / 'server.log')
    proc, port = _start_moto(log_path)
    try:
        server = ObsServer(port)
        for name in ('OBS_ENDPOINT', 'OBS_ACCESS_KEY_ID', 'OBS_SECRET_ACCESS_KEY'):
            monkeypatch.setenv(name, server.env[name])
        monkeypatch.delenv('OBS_SIGNATURE', raising=False)
        yield server
    finally:
        _stop(proc)
        errors = _server_errors(log_path)
        if errors:  # shown with the failing test's output
            print('moto server errors (%s):\n%s' % (log_path, errors[-4000:]))
