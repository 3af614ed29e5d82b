"""Fake `hccl.split.api`: gradient-fusion split strategies for allreduce (recorded, not applied).

Like every HCCL call, they need collective communication initialised first.
"""
import fake_npu_state
from hccl.manage import api as _manage

WORLD = _manage.WORLD


def set_split_strategy_by_idx(idxList, group=WORLD):  # noqa: N803  (the real argument name)
    fake_npu_state.record('set_split_strategy_by_idx', idxList=list(idxList), group=group)
    _manage._ranks(group, 'set_split_strategy_by_idx')  # pylint: disable=protected-access


def set_split_strategy_by_size(dataSizeList, group=WORLD):  # noqa: N803
    fake_npu_state.record('set_split_strategy_by_size', dataSizeList=list(dataSizeList),
                          group=group)
    _manage._ranks(group, 'set_split_strategy_by_size')  # pylint: disable=protected-access
