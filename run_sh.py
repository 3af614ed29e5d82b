#!/usr/bin/env python
"""ModelArts boot file: stage the data, make the split, train RealMix, evaluate, copy outputs back.

ModelArts: boot file run_sh.py; the job passes --data_url=obs://... --train_url=obs://...
Locally:   python run_sh.py --data_url=DIR --train_url=DIR --dataset=cifar10 [realmix.py flags]
Demo:      python run_sh.py   (no arguments: DEMO_FLAGS below, offline, a few minutes on a CPU)
Flags this file does not know go to realmix.py unchanged (e.g. --arch=smallconv --tsa=linear_schedule).
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
from absl import logging

import read_fromobs
from libml import folders, names, run_folder
from libml.utils import Stopped, UserError, cli_main, write_text_atomic

# `python run_sh.py` with no arguments runs these flags: RealMix (TSA + OOD masking) on scikit-learn's
# 8x8 digits (built offline when missing), 50 labels, 8 epochs of 8 kimg; about 3 minutes on a
# 2-core CPU. A schedule this short needs faster moving averages (EMA, batch norm) than the defaults.
DEMO_FLAGS = {
    'dataset': 'digits', 'seed': 1, 'label_size': 50, 'valid_size': 100, 'epochs': 8,
    'arch': 'resnet', 'filters': 32, 'repeat': 2,
    'train_kimg': 64, 'report_kimg': 8, 'save_kimg': 8, 'warmup_kimg': 16,
    'tsa': 'linear_schedule', 'percent_mask': 0.3, 'ema': 0.99, 'bn_momentum': 0.99,
}

ROOT = os.path.dirname(os.path.abspath(__file__))
MODELARTS_JOB_DIR = '/home/ma-user/modelarts/user-job-dir'
MODELARTS_DATA_DIR, MODELARTS_TRAIN_DIR = '/cache/data', '/cache/experiments'
LOCAL_DATA_DIR, LOCAL_TRAIN_DIR = './data', './experiments'
OFFLINE_DATASETS = ('digits',)  # create_datasets.py builds these without a download
# realmix.py flags that would turn training into something else; run_sh.py sets --eval_ckpt itself.
RESERVED_FLAGS = ('eval_ckpt', 'perform_inference', 'inference_dir', 'inference_ckpt')
DATA_WAIT_S = 4 * 3600  # how long the other ranks of a node wait for its first rank to stage the data
# How a child script reports its own error (libml.utils.cli_main, absl's flag parser).
CHILD_ERROR = re.compile(r'^(error: |FATAL Flags parsing error: )', re.M)
SAVED_STOP = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # realmix.py's exit after a saved stop

FLAGS = flags.FLAGS


def define_flags():
    """The job's own flags (defined only when run as a script, so tests can import this file)."""
    flags.DEFINE_string('data_url', '', 'Data folder in the $ML_DATA layout: obs://bucket/path or a local '
                        'folder; staged into $ML_DATA. Empty: use $ML_DATA as it is.')
    flags.DEFINE_string('train_url', '', 'Where outputs go: obs://bucket/path or a local folder. Empty: '
                        'outputs stay in the local train dir.')
    flags.DEFINE_string('dataset', 'cifar10', 'Dataset name: NAME-train/-test.tfrecord in the data.')
    flags.DEFINE_integer('seed', 1, 'Seed of the labeled/unlabeled split.', lower_bound=0)
    flags.DEFINE_integer('label_size', 250, 'Number of labeled training images.', lower_bound=1)
    flags.DEFINE_integer('valid_size', 500, 'Unlabeled images held out for validation.', lower_bound=0)
    flags.DEFINE_integer('epochs', 700, 'Epochs of --report_kimg to train.', lower_bound=1)
    flags.DEFINE_enum('device', 'auto', names.DEVICES, 'Where to train (as realmix.py --device).')
    flags.DEFINE_enum('precision', 'fp32', names.PRECISIONS, 'fp32 or mixed (as realmix.py --precision).')
    flags.DEFINE_string('train_dir', '', 'Local folder for runs; empty: %s on ModelArts, else %s.'
                        % (MODELARTS_TRAIN_DIR, LOCAL_TRAIN_DIR))
    flags.DEFINE_float('sync_every_s', 5., 'How often to look for a new checkpoint to copy to --train_url.')


# ---- where things live ----

def on_modelarts():
    """Whether this runs inside a ModelArts training job."""
    return bool(os.environ.get('MA_JOB_DIR')) or ROOT.startswith(MODELARTS_JOB_DIR + os.sep)


def local_data_dir():
    """$ML_DATA if set, else /cache/data on ModelArts, else ./data."""
    default = MODELARTS_DATA_DIR if on_modelarts() else LOCAL_DATA_DIR
    return os.path.abspath(os.environ.get('ML_DATA') or default)


def local_train_dir(flag_value):
    default = MODELARTS_TRAIN_DIR if on_modelarts() else LOCAL_TRAIN_DIR
    return os.path.abspath(flag_value or default)


def url_join(url, rel):
    """url/rel for obs:// URLs and local folders alike; rel uses '/'."""
    if read_fromobs.is_obs_url(url):
        return url.rstrip('/') + '/' + rel
    return os.path.join(url, *rel.split('/'))


def same_local_folder(url, path):
    """Whether `url` is the local folder `path` itself."""
    return not read_fromobs.is_obs_url(url) and os.path.realpath(url) == os.path.realpath(path)


def url_has_files(url):
    """Whether the folder `url` (obs:// or local) holds anything; errors on a missing bucket."""
    if not read_fromobs.is_obs_url(url):
        return os.path.isdir(url) and any(files for _, _, files in os.walk(url))
    try:
        import moxing  # pylint: disable=import-outside-toplevel  (ModelArts only)
    except ImportError:
        with read_fromobs.ObsFolder.open(url) as folder:
            return bool(folder.files())
    try:
        return moxing.file.exists(url)
    except Exception as e:  # moxing's exception types are not documented
        raise UserError('moxing cannot look into %s (%s: %s)' % (url, type(e).__name__, e))


# ---- child scripts ----

def script_env(data_dir):
    """Environment for the child scripts: the data root, and output that reaches the log at once."""
    return dict(os.environ, ML_DATA=data_dir, PYTHONUNBUFFERED='1')


def run_script(what, script, args, env):
    """Run a script of this repository, streaming its output; exit non-zero when it fails.

    A child that printed its own `error:` line leaves that as the one line; otherwise we say which
    step failed.
    """
    cmd = [sys.executable, os.path.join(ROOT, script)] + list(args)
    print('==> %s: %s' % (what, ' '.join(cmd[1:])), flush=True)
    # Its own session: a SIGINT / SIGTERM reaches the child once, forwarded from here (twice would
    # stop it at once, unsaved); it saves and exits 128 + the signal.
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True)
    with _forwarding_signals(proc):
        tail = _relay(proc.stderr.fileno(), sys.stderr)
        status = proc.wait()
    if status == 0:
        return
    if status in SAVED_STOP:  # train_and_evaluate still copies the new checkpoints to OBS
        raise Stopped('==> %s stopped on request after saving a checkpoint (exit status %d); rerun '
                      'the same job to resume' % (what, status), status)
    if status < 0:
        raise UserError('%s (%s) was killed by signal %d' % (what, script, -status))
    if CHILD_ERROR.search(tail.decode('utf-8', 'replace')):
        sys.exit(status)
    raise UserError('%s (%s) failed with exit status %d; its messages are above' % (what, script, status))


@contextlib.contextmanager
def _forwarding_signals(proc):
    """While the block runs, SIGINT and SIGTERM to this process go to `proc` instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda num, frame: proc.send_signal(num))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _relay(fd, out, keep=8192):
    """Copy everything from file descriptor `fd` to stream `out` as it comes; return the last bytes."""
    tail = b''
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return tail
        out.buffer.write(chunk)
        out.flush()
        tail = (tail + chunk)[-keep:]


# ---- data ----

def stage_data(data_url, data_dir):
    """Copy the data folder into data_dir, unless it is that folder already."""
    if not data_url:
        return
    if not read_fromobs.is_obs_url(data_url) and not os.path.isdir(data_url):
        raise UserError('--data_url=%s is not a folder: give the folder holding NAME-train.tfrecord '
                        'and NAME-test.tfrecord, or an obs:// path' % data_url)
    if same_local_folder(data_url, data_dir):
        return
    print('==> staging %s -> %s' % (data_url, data_dir), flush=True)
    read_fromobs.copy_tree(data_url, data_dir)


def prepare_dataset(name, seed, size, data_dir, source, env):
    """Make sure the test set and the split exist: build offline sets, draw the split if missing."""
    def path(part):
        return os.path.join(data_dir, '%s-%s.tfrecord' % (name, part))
    split = names.split_files(name, seed, size, data_dir)
    have_split = all(os.path.isfile(split[part]) for part in ('label', 'unlabel'))
    needed = [path('test')] + ([] if have_split else [path('train')])
    missing = [p for p in needed if not os.path.isfile(p)]
    if missing and name in OFFLINE_DATASETS:
        run_script('building %s' % name, 'scripts/create_datasets.py', [name], env)
    elif missing:
        raise UserError('%s holds no %s: the data folder needs the $ML_DATA layout, %s-train.tfrecord and '
                        '%s-test.tfrecord as written by scripts/create_datasets.py %s'
                        % (source, os.path.basename(missing[0]), name, name, name))
    if not have_split:
        inputs = [path('train')] + [p for p in [path('extra')] if os.path.isfile(p)]
        run_script('drawing the split', 'scripts/create_split.py',
                   ['--seed=%d' % seed, '--label_split_size=%d' % size,
                    os.path.join(data_dir, 'SSL', name)] + inputs, env)


# ---- runs and their outputs ----

def run_folders(dataset_dir):
    """The run folders (TRAIN_DIR/DATASET_ID/EXPERIMENT) under dataset_dir."""
    return [os.path.join(dataset_dir, d) for d in folders.sub_folders(dataset_dir)]


def newest_run(dataset_dir):
    """The run folder trained last: realmix.py rewrites args/args.json whenever training starts."""
    def started(run):
        args = run_folder.args_path(run)
        return os.path.getmtime(args if os.path.isfile(args) else run)
    runs = run_folders(dataset_dir)
    if not runs:
        raise UserError('training left no run folder under %s' % dataset_dir)
    return max(runs, key=started)


def checkpoint_stamp(run):
    """(mtime, size) of RUN/tf/checkpoint, which the saver rewrites after each checkpoint; or None."""
    try:
        stat = os.stat(os.path.join(run_folder.checkpoint_dir(run), 'checkpoint'))
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


class CheckpointSync(object):
    """Copies a run folder to train_url each time it gets a new checkpoint, from a background thread."""

    def __init__(self, train_dir, dataset_id, train_url, every_s):
        self.train_dir, self.dataset_dir = train_dir, os.path.join(train_dir, dataset_id)
        self.train_url, self.every_s = train_url, every_s
        self.seen = {run: checkpoint_stamp(run) for run in run_folders(self.dataset_dir)}
        self._lock = threading.Lock()  # the thread and the final syncs must not upload at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name='checkpoint-sync', daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _loop(self):
        while not self._stop.wait(self.every_s):
            try:
                self.sync_new_checkpoints()
            except (UserError, OSError) as e:  # a hiccup must not stop training; the final sync reports
                logging.warning('checkpoint sync failed, will retry: %s', e)

    def sync_new_checkpoints(self):
        """Upload every run folder whose checkpoint changed since the last look."""
        with self._lock:
            for run in run_folders(self.dataset_dir):
                stamp = checkpoint_stamp(run)
                if stamp is not None and stamp != self.seen.get(run):
                    self._upload(run)
                    self.seen[run] = stamp

    def sync(self, run):
        """Upload one run folder now."""
        with self._lock:
            self._upload(run)

    def _upload(self, run):
        rel = os.path.relpath(run, self.train_dir).replace(os.sep, '/')
        read_fromobs.sync_up(run, url_join(self.train_url, rel))


def restore_runs(train_url, dataset_id, train_dir):
    """Fetch earlier runs of this dataset id from train_url, so a restarted job resumes training."""
    remote = url_join(train_url, dataset_id)
    if url_has_files(remote):
        print('==> fetching earlier runs %s -> %s' % (remote, train_dir), flush=True)
        read_fromobs.copy_tree(remote, os.path.join(train_dir, dataset_id), compare_content=True)


def publish_result(run, train_url):
    """RUN/result.txt -> ./result.txt and TRAIN_URL/result.txt; returns the table."""
    with open(run_folder.result_path(run)) as f:
        table = f.read()
    write_text_atomic('result.txt', table)
    if train_url:
        with tempfile.TemporaryDirectory() as folder:
            write_text_atomic(os.path.join(folder, 'result.txt'), table)
            read_fromobs.sync_up(folder, train_url)
    return table


# ---- the job ----

def check_arguments(extra):
    if not names.DATASET_NAME.match(FLAGS.dataset):
        raise UserError('--dataset=%s: use the bare name of the data files, e.g. cifar10 for '
                        'cifar10-train.tfrecord' % FLAGS.dataset)
    for arg in extra:
        if not arg.startswith('-'):
            raise UserError('unexpected argument %r: flags are written --name=value' % arg)
        name = arg.lstrip('-').split('=', 1)[0]
        if name in RESERVED_FLAGS:
            raise UserError('--%s is not for run_sh.py, which trains then evaluates; run realmix.py '
                            '--%s=... directly' % (name, name))


def realmix_flags(dataset_id, train_dir, extra):
    """The realmix.py command line of this job."""
    return ['--dataset=' + dataset_id, '--train_dir=' + train_dir, '--epochs=%d' % FLAGS.epochs,
            '--device=' + FLAGS.device, '--precision=' + FLAGS.precision] + list(extra)


def train_and_evaluate(dataset_id, train_dir, extra, env, sync):
    """realmix.py training, then evaluation of its newest checkpoint; returns the run folder."""
    flags_of_job = realmix_flags(dataset_id, train_dir, extra)
    try:
        run_script('training', 'realmix.py', flags_of_job, env)
    finally:
        if sync:  # also after a failure: keep what was trained
            sync.sync_new_checkpoints()
    run = newest_run(os.path.join(train_dir, dataset_id))
    run_script('evaluating', 'realmix.py', flags_of_job + ['--eval_ckpt=' + run_folder.checkpoint_dir(run)],
               env)
    if sync:
        sync.sync(run)
    return run


def data_stager(environ=None):
    """The rank that stages the data on this node (its first in the rank table; else rank 0)."""
    from libml import npu_config  # pylint: disable=import-outside-toplevel  (loads TensorFlow)
    return npu_config.data_stager(environ)


def data_ready_marker(data_dir, dataset_id):
    """The file a node's first rank writes once the data and split are staged (rank 0: and earlier
    runs restored); /cache is node-local, so every node has its own."""
    return os.path.join(data_dir, '.realmix-ready-%s' % dataset_id)


def wait_for_rank_0(marker, token, timeout_s=DATA_WAIT_S, stager=0):
    """Block until rank `stager` (0, or this node's first) has written `token` into `marker`."""
    print('==> waiting for rank %d to stage the data (%s)' % (stager, marker), flush=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.path.isfile(marker):
            with open(marker) as f:
                if f.read() == token:
                    return
        time.sleep(1.)
    raise UserError('rank %d did not stage the data within %d s (no %s for this job); see rank '
                    '%d\'s log' % (stager, timeout_s, marker, stager))


def main(argv):
    from libml import npu_config  # pylint: disable=import-outside-toplevel  (loads TensorFlow)
    extra = argv[1:]
    check_arguments(extra)
    data_dir, train_dir = local_data_dir(), local_train_dir(FLAGS.train_dir)
    dataset_id = names.dataset_id(FLAGS.dataset, FLAGS.seed, FLAGS.label_size, FLAGS.valid_size)
    env = script_env(data_dir)
    cluster, token = npu_config.job_cluster(), npu_config.job_token()
    stager, marker = data_stager(), data_ready_marker(data_dir, dataset_id)
    if not cluster.chief:  # every rank trains; rank 0 alone evaluates and publishes
        if cluster.rank == stager:  # the first rank of another server stages that node's data
            stage_and_prepare(data_dir, env)
            write_text_atomic(marker, token)
        else:
            wait_for_rank_0(marker, token, stager=stager)
        run_script('training', 'realmix.py', realmix_flags(dataset_id, train_dir, extra), env)
        return
    stage_and_prepare(data_dir, env)
    train_url = '' if same_local_folder(FLAGS.train_url, train_dir) else FLAGS.train_url
    if train_url:
        restore_runs(train_url, dataset_id, train_dir)
    if cluster.workers > 1:
        write_text_atomic(marker, token)
    if train_url:
        with CheckpointSync(train_dir, dataset_id, train_url, FLAGS.sync_every_s) as sync:
            run = train_and_evaluate(dataset_id, train_dir, extra, env, sync)
    else:
        run = train_and_evaluate(dataset_id, train_dir, extra, env, None)
    table = publish_result(run, train_url)
    print('==> run folder %s%s' % (run, ', copied to ' + train_url if train_url else ''))
    print('==> result.txt\n' + table, end='', flush=True)


def stage_and_prepare(data_dir, env):
    """Stage --data_url into data_dir and make sure the test set and the split are there."""
    stage_data(FLAGS.data_url, data_dir)
    prepare_dataset(FLAGS.dataset, FLAGS.seed, FLAGS.label_size, data_dir,
                    '--data_url=' + FLAGS.data_url if FLAGS.data_url else 'data folder ' + data_dir, env)


def demo_argv():
    """DEMO_FLAGS as command-line arguments."""
    return ['--%s=%s' % item for item in DEMO_FLAGS.items()]


def parse_flags(argv):
    """Our flags; the rest stays in argv for realmix.py. No arguments at all: the demo."""
    if len(argv) == 1:
        argv = argv + demo_argv()
        print('==> no arguments: the demo, run_sh.py %s' % ' '.join(argv[1:]), flush=True)
    try:
        return FLAGS(argv, known_only=True)
    except flags.Error as e:
        sys.stderr.write('error: %s (run_sh.py --helpfull lists the flags)\n' % e)
        sys.exit(1)


if __name__ == '__main__':
    define_flags()
    app.run(cli_main(main), flags_parser=parse_flags)
