"""Test double of Huawei's `npu_bridge` (the Ascend TF Adapter for TensorFlow 1.15).

Follows TF Adapter release branch r1.7.0 (github.com/Ascend/tensorflow @ fbfb1f0, 2022-02-14),
as extracted in docs/npu_bridge_api.md: same module paths, signatures, defaults and
errors for every name it has; differences of other releases are noted where they matter. It
is a subset: only what libml uses, plus the data-parallel pieces a later scale-out will need.

Where the real adapter cannot be emulated on a CPU (the float-status overflow flags, HCCL,
iterations on the device) the fake says how it approximates it, and where the real adapter
accepts a mistake silently (unknown session-option keys, ...) the fake is stricter: see
`npu_bridge.fake_checks`, the fake-only module tests read.

Import chain: as in r1.5+, importing `npu_bridge` already needs CANN's `hccl` package (the real
`npu_plugin` imports `hccl.manage.api`); the fake `hccl` next to this package can be made absent
or broken with FAKE_NPU_HCCL (see hccl/__init__.py). Only tests put `tests/fake_npu` on
sys.path (the `fake_npu` fixture).
"""
import hccl.manage.api  # noqa: F401  (r1.5+: npu_bridge -> npu_plugin -> hccl.manage.api)
