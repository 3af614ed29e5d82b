"""Test setup: the repository root on sys.path, quiet logs, the fake npu_bridge fixture."""
import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
FAKE_NPU = os.path.join(ROOT, 'tests', 'fake_npu')


FAKE_NPU_MODULES = ('npu_bridge', 'hccl', 'fake_npu_state')  # tests/fake_npu's top-level names


def forget_npu_bridge():
    """Drop npu_bridge and the fake's other modules (CANN's hccl, its state) from sys.modules."""
    for name in list(sys.modules):
        if name.split('.')[0] in FAKE_NPU_MODULES:
            del sys.modules[name]


@pytest.fixture
def fake_npu():
    """The fake `npu_bridge` importable for one test, then gone from sys.path and sys.modules."""
    forget_npu_bridge()
    sys.path.insert(0, FAKE_NPU)
    importlib.invalidate_caches()
    yield
    sys.path.remove(FAKE_NPU)
    forget_npu_bridge()
