"""State shared by the fake `npu_bridge` and the fake CANN `hccl` package (tests only).

Not part of either real package. Tests read it through `npu_bridge.fake_checks`; nothing here is
stored on the fake objects themselves, so a test can never pass by reading an attribute that the
real classes lack (or keep private: `_opt`, `_loss_scale_manager`, `_is_distributed`, ...).

- `CALLS`: every recorded call, in order, as `Call(name, obj, args)`: constructors record the new
  object as `obj`, methods the object they were called on, functions None.
- `SYSTEM`: whether `npu_ops.initialize_system()` has run in a session (and not been shut down
  since); `hccl.manage.api`'s rank helpers refuse to answer before it has.
- `HCCL_ENV`: the environment variable that makes the fake `hccl` package absent or broken.
"""
import collections
import os

RELEASE = 'r1.7.0'  # TF Adapter branch the fake follows (see npu_bridge/__init__.py)

Call = collections.namedtuple('Call', 'name obj args')
CALLS = []
SYSTEM = {'initialized': False}

HCCL_ENV = 'FAKE_NPU_HCCL'
HCCL_MODES = ('ok', 'absent', 'broken')


def record(call, obj=None, **args):
    CALLS.append(Call(call, obj, args))


def hccl_mode():
    """'ok' (default), 'absent' (no hccl package) or 'broken' (its library does not load)."""
    mode = os.environ.get(HCCL_ENV, '') or 'ok'
    if mode not in HCCL_MODES:
        raise ValueError('%s=%r: use one of %s' % (HCCL_ENV, mode, ', '.join(HCCL_MODES)))
    return mode


def rank_size():
    """RANK_SIZE as the adapter reads it (unset: 1)."""
    return int(os.environ.get('RANK_SIZE', '') or 1)
