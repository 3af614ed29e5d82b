"""HCCL rank tables (no TensorFlow): where each rank runs, for the launcher, npu_config and run_sh.py.

Two layouts are read. Version 1.0 (`{"version": "1.0", "server_list": [{"server_id": S, "device":
[{"device_id": D, "device_ip": ..., "rank_id": R}, ...]}, ...]}`, the one CANN documents and
scripts/launch.py takes) and the older one of ModelArts' jobstart_hccl.json and the ModelZoo's 8p.json
(`{"group_list": [{"instance_list": [{"server_id": S, "rank_id": R, "devices": [{"device_id": D,
...}]}, ...]}]}`). RANK_TABLE_FILE names the table, or on some ModelArts images the folder holding it.
"""

import collections
import glob
import json
import os

from libml.utils import UserError

MODELARTS_TABLE = 'jobstart_hccl.json'  # the table's name in a ModelArts job's folder

Rank = collections.namedtuple('Rank', 'rank server device')


def table_file(path):
    """The rank table `path` names: the file itself, or in a folder jobstart_hccl.json or its one
    *.json file; '' when `path` is neither a file nor such a folder."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        return ''
    if os.path.isfile(os.path.join(path, MODELARTS_TABLE)):
        return os.path.join(path, MODELARTS_TABLE)
    found = sorted(glob.glob(os.path.join(path, '*.json')))
    return found[0] if len(found) == 1 else ''


def _bad(path, why):
    return UserError('rank table %s: %s' % (path, why))


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError('cannot read rank table %s: %s' % (path, getattr(e, 'strerror', None) or e))
    except ValueError as e:
        raise _bad(path, 'not JSON (%s)' % str(e).splitlines()[0])


def _entries(table):
    """(server_id, device entry with rank_id) of every device, from either layout; None if neither."""
    if not isinstance(table, dict):
        return None
    if isinstance(table.get('server_list'), list) and table['server_list']:
        return [(server.get('server_id'), device) for server in table['server_list']
                if isinstance(server, dict) for device in server.get('device') or [None]]
    groups = table.get('group_list')
    if isinstance(groups, list) and groups:
        return [(instance.get('server_id'),
                 dict((instance.get('devices') or [{}])[0], rank_id=instance.get('rank_id')))
                for group in groups if isinstance(group, dict)
                for instance in group.get('instance_list') or [] if isinstance(instance, dict)]
    return None


def read(path):
    """The ranks of the table at `path`, by rank id: [Rank(rank, server, device), ...]."""
    entries = _entries(_load(path))
    if not entries:
        raise _bad(path, 'no server_list (expected the version 1.0 format: {"version": "1.0", '
                         '"server_count": "1", "server_list": [{"server_id": ..., "device": [...]}]})')
    ranks = {}
    for server, entry in entries:
        try:
            rank, device = int(entry['rank_id']), int(entry['device_id'])
        except (TypeError, KeyError, ValueError):
            raise _bad(path, 'device entry %s needs integer rank_id and device_id'
                       % json.dumps(entry, sort_keys=True))
        if rank in ranks or (server, device) in [(r.server, r.device) for r in ranks.values()]:
            raise _bad(path, 'rank_id %d or device_id %d of server %s listed twice'
                       % (rank, device, server))
        ranks[rank] = Rank(rank, str(server), device)
    if sorted(ranks) != list(range(len(ranks))):
        raise _bad(path, 'rank_ids are %s; expected 0..%d' % (sorted(ranks), len(ranks) - 1))
    return [ranks[r] for r in range(len(ranks))]


def servers(ranks):
    """The server ids of `ranks`, in order of their first rank."""
    return list(collections.OrderedDict((r.server, None) for r in ranks))


def node_first_rank(ranks, rank):
    """The lowest rank on the server of `rank`: the one that stages that node's local data."""
    server = ranks[rank].server
    return min(r.rank for r in ranks if r.server == server)


def logical_device(ranks, rank):
    """The logical device id of `rank` (ASCEND_DEVICE_ID / DEVICE_ID): the position of its physical
    device_id among its server's, as a container that exposes only those chips numbers them."""
    mine = ranks[rank]
    return sorted(r.device for r in ranks if r.server == mine.server).index(mine.device)
