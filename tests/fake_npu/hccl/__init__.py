"""Fake of CANN's Python package `hccl` (`${install_path}/python/site-packages/hccl`; not part of
npu_bridge), as `npu_bridge` r1.5+ and `npu_bridge.npu_init` import it.

Environment variable FAKE_NPU_HCCL, read at import: unset/'ok' imports; 'absent' behaves as if
the package were not installed (ModuleNotFoundError, name 'hccl'); 'broken' imports the package
but `hccl.manage.api` raises ValueError('load hccl lib error') as the real one does when
`ctypes.CDLL` cannot load the HCCL library (a broken or unsourced CANN).
"""
import fake_npu_state

if fake_npu_state.hccl_mode() == 'absent':
    raise ModuleNotFoundError("No module named 'hccl'", name='hccl')
