"""Fake `hccl.split`."""
