"""Fake `hccl.manage`."""
