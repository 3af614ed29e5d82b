#!/usr/bin/env python
"""A simulated 8-card Ascend job on the fake npu_bridge (docs/many_devices.md): scripts/launch.py
--workers=8 --engine=hccl with a generated rank table, realmix.py --device=npu
--iterations_per_loop=4 on a tiny network and data. The fake's collectives really combine the 8
processes' values (FAKE_NPU_HCCL_DIR). Checks: one run folder and result table, written by rank 0
only; every checkpoint's global_step equals its name; every rank ends with the same variables but
the batch-norm moving statistics, which under HCCL stay per rank (only gradients are all-reduced).

    python tests/simulate_hccl_job.py [--workers=8] [--keep=DIR]

Prints SIMULATION_OK and the time taken, or one `error:` line and exits 1.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import tiny_data  # noqa: E402

FLAGS = ['--arch=smallconv', '--filters=8', '--repeat=1', '--batch=8', '--train_kimg=2',
         '--report_kimg=1', '--save_kimg=1', '--tune_kimg=0', '--eval_batch=64',
         '--iterations_per_loop=4', '--device=npu', '--precision=fp32', '--seed=3']


def rank_table(path, workers):
    """A version 1.0 rank table of one server with `workers` devices."""
    devices = [{'device_id': str(d), 'device_ip': '192.168.1.%d' % d, 'rank_id': str(d)}
               for d in range(workers)]
    with open(path, 'w') as f:
        json.dump({'version': '1.0', 'server_count': '1', 'status': 'completed',
                   'server_list': [{'server_id': '10.0.0.1', 'device': devices}]}, f)
    return path


def launch(work, workers):
    """Run the job; the launcher's finished process."""
    data = os.path.join(work, 'data')
    stem = tiny_data.make_ssl_dataset(data, labeled=24, unlabeled=240)
    env = dict(os.environ, ML_DATA=data, CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2',
               PYTHONPATH=os.pathsep.join([os.path.join(HERE, 'fake_npu'), ROOT]),
               FAKE_NPU_HCCL_DIR=os.path.join(work, 'hccl'))
    cmd = [sys.executable, os.path.join(ROOT, 'scripts', 'launch.py'), '--workers=%d' % workers,
           '--engine=hccl', '--rank_table=' + rank_table(os.path.join(work, 'table.json'), workers),
           '--log_dir=' + os.path.join(work, 'logs'), os.path.join(ROOT, 'realmix.py'),
           '--dataset=%s-6' % os.path.basename(stem), '--train_dir=' + os.path.join(work, 'runs')]
    return subprocess.run(cmd + FLAGS, cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)


def problems(work, workers, output):
    """What is wrong with the finished job in `work`, as strings."""
    found = []
    runs = glob.glob(os.path.join(work, 'runs', '*', '*', 'result.txt'))
    if len(runs) != 1:
        found.append('%d result.txt files, expected 1' % len(runs))
    logs = [open(p).read() for p in glob.glob(os.path.join(work, 'logs', 'worker-*.log'))]
    if len(logs) != workers - 1 or any('labeled    valid' in log for log in logs):
        found.append('a rank other than 0 printed a result table, or logs are missing')
    if 'labeled    valid' not in output:
        found.append('rank 0 printed no result table')
    found += _checkpoint_problems(glob.glob(os.path.join(work, 'runs', '*', '*', 'tf')))
    found += _weight_problems(os.path.join(work, 'hccl', 'variables'), workers)
    return found


def _checkpoint_problems(folders):
    import tensorflow.compat.v1 as tf  # pylint: disable=import-outside-toplevel
    found, names = [], []
    for folder in folders:
        for path in tf.train.get_checkpoint_state(folder).all_model_checkpoint_paths:
            path = os.path.join(folder, os.path.basename(path))
            names.append(path)
            step = int(tf.train.load_variable(path, 'global_step'))
            if step != int(path.rsplit('-', 1)[1]):
                found.append('%s holds global_step %d' % (path, step))
    return found + ([] if names else ['no checkpoint'])


def _weight_problems(folder, workers):
    saved = [np.load(os.path.join(folder, 'rank-%d.npz' % r)) for r in range(workers)
             if os.path.isfile(os.path.join(folder, 'rank-%d.npz' % r))]
    if len(saved) != workers:
        return ['%d of %d ranks saved their variables' % (len(saved), workers)]
    shared = [k for k in saved[0].files if not k.endswith(('moving_mean', 'moving_variance'))]
    worst = max(float(np.max(np.abs(other[k] - saved[0][k]))) if saved[0][k].size else 0.
                for other in saved[1:] for k in shared)
    return [] if worst == 0 else ['the ranks\' variables differ by up to %g' % worst]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workers', type=int, default=8)
    parser.add_argument('--keep', default='', help='work folder to keep (default: a temporary one)')
    args = parser.parse_args()
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix='hccl-sim-')
    os.makedirs(work, exist_ok=True)
    started = time.time()
    proc = launch(work, args.workers)
    seconds = time.time() - started
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-3000:])
        print('error: the simulated job failed (exit %d); logs in %s' % (proc.returncode, work))
        return 1
    found = problems(work, args.workers, proc.stdout)
    if found:
        print('error: ' + '; '.join(found) + ' (work folder %s)' % work)
        return 1
    print('SIMULATION_OK %d workers in %.0f s (%s)' % (args.workers, seconds, work))
    return 0


if __name__ == '__main__':
    sys.exit(main())
