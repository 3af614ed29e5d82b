"""Fake `npu_bridge.hccl`."""
