#!/usr/bin/env python
"""Start N data-parallel workers of a training script on this machine (see docs/devices.md).

    python scripts/launch.py --workers=N [--engine=tf|hccl] [--rank_table=FILE] [--log_dir=DIR]
                             SCRIPT [SCRIPT FLAGS...]

Every worker runs `python SCRIPT SCRIPT-FLAGS` (the launcher's interpreter, same folder) with its
cluster in the environment: TF_CONFIG for TensorFlow's MultiWorkerMirroredStrategy (--engine=tf,
CPU/GPU; free ports on 127.0.0.1), or RANK_TABLE_FILE/RANK_SIZE/RANK_ID/DEVICE_ID for Ascend HCCL
(--engine=hccl). Rank 0 prints here; ranks 1..N-1 write LOG_DIR/worker-<i>.log. When a worker
fails, the other workers are stopped (SIGTERM, SIGKILL after 5 s), one `error:` line says which
worker and why, and the exit status is 1. SIGINT / SIGTERM to the launcher send SIGTERM to every
worker; realmix.py workers finish their step, save and exit 143 (a saved stop, docs/training.md),
and the launcher waits for them (--stop_grace_s; a second signal: SIGKILL now) and exits 143.
"""

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from libml import rank_table  # noqa: E402
from libml.stops import signal_name  # noqa: E402
from libml.utils import Stopped, UserError, cli_main  # noqa: E402

flags.DEFINE_integer('workers', None, 'Number of worker processes (>= 1).')
flags.DEFINE_enum('engine', 'tf', ['tf', 'hccl'], 'tf: TF_CONFIG for MultiWorkerMirroredStrategy '
                  '(CPU/GPU); hccl: Ascend rank table environment (needs --rank_table).')
flags.DEFINE_string('rank_table', '', 'HCCL rank table JSON (version 1.0 format) listing exactly '
                    '--workers devices; --engine=hccl only.')
flags.DEFINE_integer('stop_grace_s', 900, 'After SIGINT / SIGTERM, how long the workers may take '
                     'to finish their step and save before they are killed.', lower_bound=0)
# --log_dir (folder of worker-<i>.log for ranks 1..N-1; default a new temporary folder launch-*) is
# absl.logging's flag of that name, defined when absl.app imports it; this launcher writes no absl
# log files there itself.
FLAGS = flags.FLAGS

USAGE = ('usage: launch.py --workers=N [--engine=tf|hccl] [--rank_table=FILE] [--log_dir=DIR] '
         'SCRIPT [SCRIPT FLAGS...]')
POLL_S = 0.2          # how often the children are polled
GRACE_S = 5.0         # SIGTERM, then SIGKILL after this long
SAVED_STOP = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # a worker's exit after a saved stop
DEFAULT_JOB_ID = '10385'  # as the Ascend ModelZoo launch scripts
CLUSTER_VARS = ('TF_CONFIG', 'RANK_TABLE_FILE', 'RANK_SIZE', 'RANK_ID')


def split_argv(argv):
    """argv -> (the launcher's argv: program + its flags, [SCRIPT, SCRIPT FLAGS...]).

    The launcher's flags end at the first argument that is not a flag (or after `--`); a launcher
    flag written `--name VALUE` takes the next argument as its value."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == '--':
            return argv[:i], argv[i + 1:]
        if not arg.startswith('-') or arg == '-':
            break
        name = arg.lstrip('-')
        if '=' not in name and name in FLAGS and not FLAGS[name].boolean:
            i += 1  # `--name VALUE`
        i += 1
    return argv[:i], argv[i:]


def parse_argv(argv):
    """absl's flags_parser: parse only the launcher's flags; main gets [program, SCRIPT, ...]."""
    own, rest = split_argv(argv)
    return app.parse_flags_with_usage(own)[:1] + rest


def free_ports(n):
    """n distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_envs(n):
    """Per rank: the variables to set (TF_CONFIG) for MultiWorkerMirroredStrategy; each worker
    sees GPU number `rank` only, unless CUDA_VISIBLE_DEVICES is set already (then all share it)."""
    workers = ['127.0.0.1:%d' % port for port in free_ports(n)]
    envs = [{'TF_CONFIG': json.dumps({'cluster': {'worker': workers},
                                      'task': {'type': 'worker', 'index': i}})}
            for i in range(n)]
    if 'CUDA_VISIBLE_DEVICES' not in os.environ:
        for rank, env in enumerate(envs):
            env['CUDA_VISIBLE_DEVICES'] = str(rank)
    return envs


def read_rank_table(path, n):
    """The logical device id of each rank 0..n-1 from a HCCL rank table of one server: the position
    of its device_id among the table's, as a container exposing only those chips numbers them."""
    ranks = rank_table.read(path)
    count = len(rank_table.servers(ranks))
    if count != 1:
        raise UserError('rank table %s: lists %d servers; this launcher starts the workers of one '
                        'machine' % (path, count))
    if len(ranks) != n:
        raise UserError('rank table %s: lists %d devices but --workers=%d' % (path, len(ranks), n))
    return [str(rank_table.logical_device(ranks, r)) for r in range(n)]


def hccl_envs(n, table):
    """Per rank: the variables to set for Ascend HCCL (rank table, rank, logical device, job id)."""
    if not table:
        raise UserError('--engine=hccl needs --rank_table=FILE (a HCCL rank table JSON)')
    devices = read_rank_table(table, n)
    path = os.path.abspath(table)
    job_id = os.environ.get('JOB_ID') or DEFAULT_JOB_ID
    return [{'RANK_TABLE_FILE': path, 'RANK_SIZE': str(n), 'RANK_ID': str(r),
             'DEVICE_ID': devices[r], 'ASCEND_DEVICE_ID': devices[r], 'JOB_ID': job_id}
            for r in range(n)]


def death_signal():
    """A preexec_fn (Linux; else None) that has the child SIGKILLed when the launcher dies, so a
    launcher killed with SIGKILL leaves no orphan workers. libc is looked up here, not in the
    child between fork and exec."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    launcher = os.getpid()

    def preexec():
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != launcher:  # the launcher died before prctl
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class Workers:
    """The worker processes, each the leader of its own process group."""

    def __init__(self):
        self.procs = []
        self.preexec = death_signal()

    def start(self, cmd, env, log_path):
        if log_path is None:  # rank 0: the launcher's own stdout and stderr
            out, err, log = None, None, None
        else:
            log = open(log_path, 'wb')
            out, err = log, subprocess.STDOUT
        try:
            self.procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err,
                                               stdin=subprocess.DEVNULL, start_new_session=True,
                                               preexec_fn=self.preexec))
        finally:
            if log is not None:
                log.close()

    def first_failure(self):
        """(rank, status) of a worker that failed, or None; 'done' when all exited 0 or stopped
        on request (exit 128 + SIGINT/SIGTERM: the others stop after the same step)."""
        codes = [p.poll() for p in self.procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0) + SAVED_STOP:
                return rank, code
        return 'done' if None not in codes else None

    def saved_stop(self):
        """The exit status of a saved stop when a worker made one, else None."""
        return next((p.returncode for p in self.procs if p.returncode in SAVED_STOP), None)

    def signal_all(self, sig):
        """Signal each worker's process group (a worker that exited may have left children)."""
        for p in self.procs:
            try:
                os.killpg(p.pid, sig)
            except OSError:  # the group is empty
                pass

    def stop(self, hurry=lambda: False, grace_s=GRACE_S):
        """SIGTERM every running worker's group, SIGKILL what is left after `grace_s` (sooner
        when hurry()), and reap them all."""
        self.signal_all(signal.SIGTERM)
        deadline = time.time() + grace_s
        while any(p.poll() is None for p in self.procs) and time.time() < deadline and not hurry():
            time.sleep(0.05)
        self.signal_all(signal.SIGKILL)
        for p in self.procs:
            p.wait()


def main(argv):
    if FLAGS.workers is None:
        raise UserError('--workers=N is required; ' + USAGE)
    if FLAGS.workers < 1:
        raise UserError('--workers must be >= 1, got %d' % FLAGS.workers)
    if len(argv) < 2:
        raise UserError('no SCRIPT given; ' + USAGE)
    script, args = argv[1], argv[2:]
    if not os.path.isfile(script):
        raise UserError('SCRIPT %s: no such file' % script)
    if FLAGS.engine != 'hccl' and FLAGS.rank_table:
        raise UserError('--rank_table is for --engine=hccl only')
    n = FLAGS.workers
    cluster = tf_envs(n) if FLAGS.engine == 'tf' else hccl_envs(n, FLAGS.rank_table)

    log_dir = None
    if n > 1:
        if FLAGS.log_dir:
            log_dir = os.path.abspath(FLAGS.log_dir)
            try:
                os.makedirs(log_dir, exist_ok=True)
            except OSError as e:
                raise UserError('cannot create --log_dir %s: %s' % (log_dir, e.strerror or e))
        else:
            log_dir = tempfile.mkdtemp(prefix='launch-')
        where = 'logs of ranks 1..%d in %s' % (n - 1, log_dir)
    else:
        where = 'no other ranks'
    print('launch: %d workers (%s), %s' % (n, FLAGS.engine, where), flush=True)
    sys.stderr.flush()

    received = []  # signals the launcher got

    def on_signal(num, _frame):
        received.append(num)
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    base = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
    base['PYTHONUNBUFFERED'] = '1'
    workers = Workers()
    failure = None
    try:
        for rank in range(n):
            if received:
                break
            log_path = None if rank == 0 else os.path.join(log_dir, 'worker-%d.log' % rank)
            try:
                workers.start([sys.executable, script] + args, dict(base, **cluster[rank]),
                              log_path)
            except OSError as e:
                raise UserError('cannot start worker %d: %s' % (rank, e))
        while not received:
            failure = workers.first_failure()
            if failure is not None:
                break
            time.sleep(POLL_S)
    finally:
        if failure != 'done':
            # SIGTERM to each worker; asked to stop, they get time to save (a worker failed:
            # GRACE_S). A signal that arrives while stopping skips the rest.
            first = len(received)
            workers.stop(hurry=lambda: len(received) > first,
                         grace_s=FLAGS.stop_grace_s if received else GRACE_S)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    saved = workers.saved_stop()
    if failure == 'done' and saved is None:
        return 0
    if failure in ('done', None) and saved is not None:
        raise Stopped('launch: the workers stopped on request after saving a checkpoint (exit '
                      'status %d); rerun the same command to resume' % saved, saved)
    if failure is None:
        raise UserError('launcher got %s; stopped all %d workers%s'
                        % (signal_name(received[0]), n, '; ' + where if log_dir else ''))
    rank, code = failure
    status = '%d (signal %s)' % (code, signal_name(-code)) if code < 0 else str(code)
    if rank == 0:
        log = 'its output is above'
    else:
        log = 'its log: ' + os.path.join(log_dir, 'worker-%d.log' % rank)
    raise UserError('worker %d exited with status %s; stopped the other workers; %s'
                    % (rank, status, log))


if __name__ == '__main__':
    app.run(cli_main(main), flags_parser=parse_argv)
