"""Cross-process collectives for the fake `hccl_ops` (tests only; no such module in CANN).

By default the fake emulates RANK_SIZE identical ranks inside one process. With env
FAKE_NPU_HCCL_DIR set to a folder shared by the RANK_SIZE worker processes of one job (a simulated
multi-card job, scripts/launch.py --engine=hccl), allreduce and broadcast really combine the ranks'
values instead: each rank writes its value for the k-th run of a collective op to
DIR/<op>/<k>/<rank>.npy and waits (FAKE_NPU_HCCL_WAIT_S, default 600 s) for every rank's file.
The op is a tf.py_func, so such a graph is for simulation only (the graph audit refuses Python ops).
Sessions get a private inter-op pool of 64 threads in this mode: a collective blocks its thread
until the other ranks reach it, and a small pool could otherwise wait on itself. A session that
closes saves its graph's global variables to DIR/variables/rank-<rank>.npz, so that a test can
compare the ranks' weights at the end of the job.
"""
import collections
import os
import threading
import time

import numpy as np
import tensorflow.compat.v1 as tf

DIR_ENV, WAIT_ENV = 'FAKE_NPU_HCCL_DIR', 'FAKE_NPU_HCCL_WAIT_S'
_RUNS = collections.Counter()  # op name -> how often it ran in this process
_LOCK = threading.Lock()


def folder():
    """The exchange folder, or '' when the fake emulates identical ranks in one process."""
    return os.environ.get(DIR_ENV, '')


def _rank():
    return int(os.environ.get('RANK_ID', '') or 0)


def _rendezvous(key, value, size):
    """Every rank's value of the current run of collective `key`, in rank order."""
    with _LOCK:
        _RUNS[key] += 1
        where = os.path.join(folder(), key.replace('/', '.'), str(_RUNS[key]))
    os.makedirs(where, exist_ok=True)
    mine = os.path.join(where, '%d.npy' % _rank())
    np.save(mine + '.tmp.npy', value)
    os.rename(mine + '.tmp.npy', mine)
    paths = [os.path.join(where, '%d.npy' % r) for r in range(size)]
    deadline = time.time() + float(os.environ.get(WAIT_ENV, '') or 600)
    while not all(os.path.exists(p) for p in paths):
        if time.time() > deadline:
            raise RuntimeError('fake HCCL: %s run %d: not every rank came within the wait'
                               % (key, _RUNS[key]))
        time.sleep(0.005)
    return [np.load(p) for p in paths]


def collective(tensor, size, combine):
    """`combine(values in rank order)` over the ranks, as a py_func op of `tensor`'s shape."""
    key = []

    def run(value):
        return np.asarray(combine(_rendezvous(key[0], value, size)), dtype=value.dtype)

    out = tf.py_func(run, [tensor], tensor.dtype, stateful=True)
    key.append(out.op.name)
    out.set_shape(tensor.shape)
    return out


def _session_init(original):
    """tf.Session.__init__ giving each session its own large inter-op pool in exchange mode."""
    def init(self, target='', graph=None, config=None):
        if folder():
            config = tf.ConfigProto() if config is None else config
            config.inter_op_parallelism_threads = max(config.inter_op_parallelism_threads, 64)
            config.use_per_session_threads = True
        original(self, target, graph, config)
    init.fake_npu_exchange = True
    return init


def _session_close(original):
    """tf.Session.close saving the global variables first in exchange mode (training sessions)."""
    def close(self):
        variables = self.graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES)
        if folder() and variables and not self._closed:  # pylint: disable=protected-access
            values = self.run(variables)
            where = os.path.join(folder(), 'variables')
            os.makedirs(where, exist_ok=True)
            np.savez(os.path.join(where, 'rank-%d.npz' % _rank()),
                     **dict((v.op.name.replace('/', '|'), x) for v, x in zip(variables, values)))
        original(self)
    close.fake_npu_exchange = True
    return close


if not getattr(tf.Session.__init__, 'fake_npu_exchange', False):
    tf.Session.__init__ = _session_init(tf.Session.__init__)
    tf.Session.close = _session_close(tf.Session.close)
