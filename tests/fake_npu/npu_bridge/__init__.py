"""Test double of Huawei's `npu_bridge` (TF adapter for Ascend): just what libml uses.

Only tests put `tests/fake_npu` on sys.path (see the `fake_npu` fixture).
"""
