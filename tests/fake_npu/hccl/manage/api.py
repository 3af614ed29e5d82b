"""Fake `hccl.manage.api`: rank and group queries of the collective-communication library.

The real module loads the HCCL shared library at import and raises ValueError (not ImportError)
when it cannot: emulated by FAKE_NPU_HCCL=broken. Every function must be called after collective
communication is initialised, i.e. after `sess.run(npu_ops.initialize_system())`; before that the
fake raises ValueError, the error type of the real module (non-zero HCCL return codes).

Emulated cluster: RANK_SIZE ranks (unset: 1), this process is RANK_ID (unset: 0), 8 devices a
server (local rank size min(RANK_SIZE, 8), local rank id RANK_ID % 8).
"""
import os

import fake_npu_state

if fake_npu_state.hccl_mode() == 'broken':
    raise ValueError('load hccl lib error')

WORLD = 'hccl_world_group'
DEVICES_PER_SERVER = 8
_GROUPS = {}  # created groups: name -> list of world rank ids


def _require_initialized(name):
    if not fake_npu_state.SYSTEM['initialized']:
        raise ValueError('%s: HCCL is not initialised; run npu_ops.initialize_system() in a '
                         'session first' % name)


def _ranks(group, name):
    """The world rank ids of `group`."""
    _require_initialized(name)
    if not isinstance(group, str):
        raise ValueError('%s: group must be a str, got %r' % (name, group))
    if group == WORLD:
        return list(range(fake_npu_state.rank_size()))
    if group not in _GROUPS:
        raise ValueError('%s: unknown group %r' % (name, group))
    return _GROUPS[group]


def _rank_id():
    return int(os.environ.get('RANK_ID', '') or 0)


def get_rank_size(group=WORLD):
    fake_npu_state.record('get_rank_size', group=group)
    return len(_ranks(group, 'get_rank_size'))


def get_rank_id(group=WORLD):
    fake_npu_state.record('get_rank_id', group=group)
    ranks = _ranks(group, 'get_rank_id')
    if _rank_id() not in ranks:
        raise ValueError('get_rank_id: rank %d is not in group %r' % (_rank_id(), group))
    return ranks.index(_rank_id())


def get_local_rank_size(group=WORLD):
    fake_npu_state.record('get_local_rank_size', group=group)
    return min(len(_ranks(group, 'get_local_rank_size')), DEVICES_PER_SERVER)


def get_local_rank_id(group=WORLD):
    fake_npu_state.record('get_local_rank_id', group=group)
    _ranks(group, 'get_local_rank_id')
    return _rank_id() % DEVICES_PER_SERVER


def create_group(group, rank_num, rank_ids):
    fake_npu_state.record('create_group', group=group, rank_num=rank_num, rank_ids=rank_ids)
    world = _ranks(WORLD, 'create_group')
    if not isinstance(group, str) or group == WORLD or group in _GROUPS:
        raise ValueError('create_group: bad or existing group name %r' % (group,))
    rank_ids = list(rank_ids)
    if rank_num != len(rank_ids) or not set(rank_ids) <= set(world) or \
            len(set(rank_ids)) != len(rank_ids):
        raise ValueError('create_group: rank_num %r and rank_ids %r do not match the %d ranks'
                         % (rank_num, rank_ids, len(world)))
    _GROUPS[group] = rank_ids


def destroy_group(group):
    fake_npu_state.record('destroy_group', group=group)
    _ranks(group, 'destroy_group')
    if group == WORLD:
        raise ValueError('destroy_group: cannot destroy %r' % WORLD)
    del _GROUPS[group]


def get_world_rank_from_group_rank(group, group_rank_id):
    fake_npu_state.record('get_world_rank_from_group_rank', group=group,
                          group_rank_id=group_rank_id)
    ranks = _ranks(group, 'get_world_rank_from_group_rank')
    if not 0 <= group_rank_id < len(ranks):
        raise ValueError('group rank %r out of range for %r' % (group_rank_id, group))
    return ranks[group_rank_id]


def get_group_rank_from_world_rank(world_rank_id, group):
    fake_npu_state.record('get_group_rank_from_world_rank', world_rank_id=world_rank_id,
                          group=group)
    ranks = _ranks(group, 'get_group_rank_from_world_rank')
    if world_rank_id not in ranks:
        raise ValueError('world rank %r is not in group %r' % (world_rank_id, group))
    return ranks.index(world_rank_id)
