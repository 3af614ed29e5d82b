"""Fake `npu_bridge.estimator.npu`."""
