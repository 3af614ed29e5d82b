"""libml.rank_table (both rank-table layouts, nodes, logical device ids) and its use by run_sh.py on
a rank table of several servers: each node's first rank stages that node's data."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from libml import rank_table
from libml.utils import UserError
from test_npu_distributed import write_rank_table
from test_run_sh import SPLIT, TINY, write_tiny_dataset

import run_sh


def old_layout(path, servers):
    """The group_list layout of ModelArts' jobstart_hccl.json: one instance per rank."""
    instances, rank = [], 0
    for index, devices in enumerate(servers):
        for device in devices:
            instances.append({'server_id': '10.0.0.%d' % (index + 1), 'rank_id': str(rank),
                              'devices': [{'device_id': str(device), 'device_ip': 'x'}]})
            rank += 1
    path.write_text(json.dumps({'group_list': [{'instance_list': instances}]}))
    return str(path)


@pytest.mark.parametrize('write', [write_rank_table, old_layout])
def test_both_layouts_give_servers_first_ranks_and_logical_devices(tmp_path, write):
    ranks = rank_table.read(write(tmp_path / 'table.json', [[4, 5, 6, 7], [0, 1, 2, 3]]))
    assert [(r.rank, r.device) for r in ranks] == list(enumerate([4, 5, 6, 7, 0, 1, 2, 3]))
    assert rank_table.servers(ranks) == ['10.0.0.1', '10.0.0.2']
    assert [rank_table.node_first_rank(ranks, r) for r in range(8)] == [0] * 4 + [4] * 4
    assert [rank_table.logical_device(ranks, r) for r in range(8)] == [0, 1, 2, 3] * 2


def test_the_table_of_a_folder(tmp_path):
    assert rank_table.table_file(str(tmp_path)) == ''
    (tmp_path / 'other.json').write_text('{}')
    assert rank_table.table_file(str(tmp_path)) == str(tmp_path / 'other.json')
    (tmp_path / 'jobstart_hccl.json').write_text('{}')
    assert rank_table.table_file(str(tmp_path)) == str(tmp_path / 'jobstart_hccl.json')
    assert rank_table.table_file(str(tmp_path / 'nothing')) == ''


def test_rank_ids_must_be_0_to_n_minus_1(tmp_path):
    path = tmp_path / 't.json'
    path.write_text(json.dumps({'server_list': [{'server_id': 's', 'device': [
        {'device_id': '0', 'rank_id': '1'}]}]}))
    with pytest.raises(UserError, match=r'rank_ids are \[1\]; expected 0..0'):
        rank_table.read(str(path))


def test_run_sh_stages_on_each_node_s_first_rank(tmp_path):
    table = write_rank_table(tmp_path / 'table.json', [[0, 1], [0, 1]])
    env = dict(RANK_SIZE='4', RANK_TABLE_FILE=table, JOB_ID='7')
    assert [run_sh.data_stager(dict(env, RANK_ID=str(r))) for r in range(4)] == [0, 0, 2, 2]
    assert run_sh.data_stager({}) == 0


def test_a_rank_first_on_another_node_stages_its_data_and_trains_without_waiting(tmp_path):
    """Rank 1 of a two-server job: its /cache is its own, so it stages the data itself."""
    write_tiny_dataset(str(tmp_path / 'bucket_data'))
    table = write_rank_table(tmp_path / 'table.json', [[0], [0]])
    env = dict(os.environ, ML_DATA=str(tmp_path / 'data'), CUDA_VISIBLE_DEVICES='',
               RANK_SIZE='2', RANK_ID='1', RANK_TABLE_FILE=table, JOB_ID='7')
    env.pop('MA_JOB_DIR', None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'run_sh.py'), '--data_url=' + str(tmp_path / 'bucket_data'),
         '--train_dir=' + str(tmp_path / 'experiments'), '--epochs=1', '--device=cpu'] + SPLIT + TINY,
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'waiting for' not in proc.stdout and 'staging' in proc.stdout
    assert 'evaluating' not in proc.stdout and not os.path.exists(str(tmp_path / 'result.txt'))
