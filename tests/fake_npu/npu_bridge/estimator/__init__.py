"""Fake `npu_bridge.estimator`."""
