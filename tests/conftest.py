"""Test setup: the repository root on sys.path, quiet logs; fixtures and checks every test file
shares (the fake npu_bridge, an empty $ML_DATA, the one-line-error contract)."""
import glob
import importlib
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import libml  # noqa: E402,F401  (first: tests run with the TensorFlow environment users get)
FAKE_NPU = os.path.join(ROOT, 'tests', 'fake_npu')


FAKE_NPU_MODULES = ('npu_bridge', 'hccl', 'fake_npu_state')  # tests/fake_npu's top-level names


def forget_npu_bridge():
    """Drop npu_bridge and the fake's other modules (CANN's hccl, its state) from sys.modules."""
    for name in list(sys.modules):
        if name.split('.')[0] in FAKE_NPU_MODULES:
            del sys.modules[name]


@pytest.fixture
def ml_data(tmp_path, monkeypatch):
    """An empty $ML_DATA folder for one test."""
    path = str(tmp_path / 'data')
    os.makedirs(path)
    monkeypatch.setenv('ML_DATA', path)
    return path


def run_script(script, args, ml_data):
    """Run scripts/SCRIPT with `args` on $ML_DATA = ml_data; the finished process, text output."""
    return subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', script)] + list(args),
                          env=dict(os.environ, ML_DATA=ml_data), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)


def assert_one_line_error(returncode, output, *words):
    """The contract for bad input: exit status 1, one `error:` line (absl's flag parser: one `FATAL
    Flags parsing error:` line) holding every one of `words`, no traceback. Returns the line."""
    errors = [line for line in output.splitlines()
              if line.startswith(('error: ', 'FATAL Flags parsing error: '))]
    assert returncode == 1, (returncode, output)
    assert len(errors) == 1 and 'Traceback' not in output, output
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def fake_npu():
    """The fake `npu_bridge` importable for one test, then gone from sys.path and sys.modules."""
    forget_npu_bridge()
    sys.path.insert(0, FAKE_NPU)
    importlib.invalidate_caches()
    yield
    sys.path.remove(FAKE_NPU)
    forget_npu_bridge()


def file_size_limit(limit):
    """A preexec_fn under which writes past `limit` bytes fail with EFBIG: a full disk."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def realmix(args, ml_data, **kwargs):
    """realmix.py started with `args` on $ML_DATA = ml_data, output (both streams) as text."""
    env = dict(os.environ, ML_DATA=ml_data, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'realmix.py')] + args, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def kill_at_first_checkpoint(args, ml_data, train_dir, timeout=240):
    """realmix.py with `args` killed by SIGKILL once its first checkpoint is written; its output."""
    process = realmix(args, ml_data)
    deadline = time.time() + timeout
    while not glob.glob(os.path.join(train_dir, '*', '*', 'tf', 'checkpoint')):
        assert process.poll() is None, process.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    return process.communicate()[0]


def finish(process, timeout=240):
    """(exit status, output) of a process from `realmix`."""
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def run_dir_of(train_dir):
    """The one run folder under TRAIN_DIR/DATASET/."""
    runs = glob.glob(os.path.join(train_dir, '*', '*'))
    assert len(runs) == 1, runs
    return runs[0]
