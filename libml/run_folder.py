"""A run folder, TRAIN_DIR/DATASET/EXPERIMENT/: its layout, args.json, checkpoints (newest first,
partial saves, restore checks) and result files. Training, evaluation, inference and export all
read and write runs through this module, so none of them depends on another.

    RUN/args/args.json    every hyperparameter of the run (the network is rebuilt from it)
    RUN/tf/               checkpoints model.ckpt-N (N: images trained), TensorBoard events
    RUN/result.txt        the last evaluation's accuracy table; RUN/stats.json: all of it
"""

import glob
import json
import os
import re
import shutil

import tensorflow.compat.v1 as tf

from libml.utils import UserError, error_text, write_text_atomic

CHECKPOINT_PREFIX = 'model.ckpt'
_CHECKPOINT_INDEX = re.compile(r'^model\.ckpt-(\d+)\.index$')
# What an optimizer keeps beside the model: slot variables VAR/SLOT (Adam's two moments,
# Momentum's accumulator) and Adam's power accumulators (in a cond scope under loss scaling).
OPTIMIZER_SLOTS = ('Adam', 'Adam_1', 'Momentum')
OPTIMIZER_ACCUMULATORS = ('beta1_power', 'beta2_power')


# ---- layout ----

def args_path(run_dir):
    """Where a run folder keeps every parameter of its run."""
    return os.path.join(run_dir, 'args', 'args.json')


def checkpoint_dir(run_dir):
    """RUN/tf: the checkpoints and the TensorBoard events."""
    return os.path.join(run_dir, 'tf')


def result_path(run_dir):
    """RUN/result.txt: the accuracy table of the run's last evaluation."""
    return os.path.join(run_dir, 'result.txt')


def stats_path(run_dir):
    """RUN/stats.json: everything the last evaluation measured, with its step."""
    return os.path.join(run_dir, 'stats.json')


def run_of_checkpoint(checkpoint):
    """The run folder a checkpoint belongs to: RUN/tf/model.ckpt-N -> RUN."""
    return os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))


# ---- args.json ----

def read_args(run_dir):
    """The run's args.json as a dict, or None when the folder has none; UserError if unreadable."""
    path = args_path(run_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise UserError('%s is not valid JSON (%s)' % (path, e))


def write_args(run_dir, hp):
    """args.json, written atomically."""
    write_text_atomic(args_path(run_dir), json.dumps(hp, indent=2, sort_keys=True) + '\n')


# ---- checkpoints ----

def checkpoints_newest_first(folder):
    """The checkpoint prefixes FOLDER/model.ckpt-N that have an index file, highest N first (the
    files themselves, not tf/checkpoint's list, which a damaged or lost state file would hide)."""
    found = []
    for index in glob.glob(os.path.join(folder, CHECKPOINT_PREFIX + '-*.index')):
        match = _CHECKPOINT_INDEX.match(os.path.basename(index))
        if match:
            found.append((int(match.group(1)), index[:-len('.index')]))
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_step(path):
    """The step in a checkpoint prefix's name (RUN/tf/model.ckpt-STEP)."""
    return int(path.rsplit('-', 1)[1])


def checkpoint_steps(run_dir):
    """The steps of the complete checkpoints in RUN/tf/, ascending."""
    return sorted(checkpoint_step(p) for p in checkpoints_newest_first(checkpoint_dir(run_dir)))


def checkpoint_path(path):
    """A checkpoint prefix, or a folder holding checkpoints (its newest); UserError when missing."""
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        raise UserError('no checkpoint in folder %s; pass a path like RUN/tf/model.ckpt-65536' % path)
    if not os.path.isfile(path + '.index'):
        raise UserError('checkpoint %s does not exist (no %s.index); pass a path like '
                        'RUN/tf/model.ckpt-65536 or a run\'s tf/ folder' % (path, path))
    return path


def find_checkpoint(run_dir, step=None):
    """The checkpoint prefix of `step` in RUN/tf/, or the newest one; UserError when missing."""
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise UserError('%s has no checkpoint in tf/; train the run first' % run_dir)
    folder = checkpoint_dir(run_dir)
    if step is None:  # the newest the state file names, else the highest step
        latest = tf.train.latest_checkpoint(folder)
        return latest or os.path.join(folder, '%s-%d' % (CHECKPOINT_PREFIX, steps[-1]))
    if step not in steps:
        raise UserError('%s has no checkpoint at step %d (tf/model.ckpt-%d); it has steps %s'
                        % (run_dir, step, step, ', '.join(str(s) for s in steps)))
    return checkpoint_path(os.path.join(folder, '%s-%d' % (CHECKPOINT_PREFIX, step)))


def remove_partial_saves(folder):
    """Delete what a save killed midway leaves (TensorFlow's *_temp* folders, *.tmp* files)."""
    for path in glob.glob(os.path.join(folder, '*_temp*')) + glob.glob(os.path.join(folder, '*.tmp*')):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def drop_checkpoints_from(folder, step):
    """Delete checkpoints of `step` and later; point tf/checkpoint at the newest one left."""
    state = tf.train.get_checkpoint_state(folder)
    paths = list(state.all_model_checkpoint_paths) if state else []
    kept = [p for p in paths if checkpoint_step(p) < step]
    for prefix in paths:
        if prefix not in kept:
            for path in glob.glob(os.path.join(folder, os.path.basename(prefix)) + '.*'):
                os.remove(path)
    if paths:
        if kept:  # The state file's text format, with relative paths as our saver writes them.
            names = [os.path.basename(p) for p in kept]
            write_text_atomic(os.path.join(folder, 'checkpoint'), 'model_checkpoint_path: "%s"\n%s' % (
                names[-1], ''.join('all_model_checkpoint_paths: "%s"\n' % n for n in names)))
        else:
            os.remove(os.path.join(folder, 'checkpoint'))
    return os.path.join(folder, os.path.basename(kept[-1])) if kept else ''


# ---- restoring ----

def restore_newest(session, saver, folder):
    """Restore the newest checkpoint of `folder` that loads and return its path ('' when there is
    none); one line per damaged one skipped, UserError when none loads. Nothing is deleted."""
    candidates = checkpoints_newest_first(folder)
    for path in candidates:
        try:
            saver.restore(session, path)
            return path
        except (tf.errors.OpError, ValueError) as e:
            print('Skipped checkpoint %s: it does not restore (%s)' % (path, error_text(e)))
    if candidates:
        raise UserError('none of the %d checkpoints in %s restores (each is named above); '
                        'nothing was deleted: move the folder away to start afresh, or copy '
                        'good checkpoints back' % (len(candidates), folder))
    return ''


def is_optimizer_state(name):
    """True for an optimizer's variables (any optimizer's slots, Adam's power accumulators)."""
    parts = name.split('/')
    return any(part in OPTIMIZER_SLOTS for part in parts[1:]) or parts[-1] in OPTIMIZER_ACCUMULATORS


def _is_head(name):
    return '/dense' in name


def model_variables():
    """What evaluation needs: weights, batch-norm statistics, EMA shadows and the step; no
    optimizer state."""
    return [v for v in tf.global_variables()
            if (v.op.name.startswith('classify/') and not is_optimizer_state(v.op.name))
            or v.op.name == 'global_step']


def fine_tune_variables(reset_optimizer):
    """What --load_checkpoint restores, as the reference does: everything but the classifier head
    (weights, statistics, EMA shadows, the optimizer's slots and Adam's powers); not the step."""
    keep = []
    for v in tf.global_variables():
        name = v.op.name
        if reset_optimizer and is_optimizer_state(name):
            continue
        if name.startswith('classify/') and not _is_head(name):
            keep.append(v)
        elif name.split('/')[-1] in OPTIMIZER_ACCUMULATORS:
            # Under loss scaling the powers live in a cond scope (cond/beta1_power, cond_1/...).
            keep.append(v)
    return keep


class CheckedRestore(object):
    """Restores a list of variables from a checkpoint after checking that it holds each of them
    with the same shape; otherwise one UserError naming the first that differs."""

    def __init__(self, variables):
        self.variables = variables
        self.saver = tf.train.Saver(var_list=variables)

    def restore(self, session, path):
        saved = dict(tf.train.list_variables(path))
        for variable in self.variables:
            name, shape = variable.op.name, variable.shape.as_list()
            if name not in saved:
                hint = ('; --reset_optimizer starts the optimizer afresh'
                        if is_optimizer_state(name) else '')
                raise UserError('%s does not hold %s: it was trained with another network or '
                                'method (compare its args.json: --arch, --filters, --repeat, '
                                '--scales)%s' % (path, name, hint))
            if list(saved[name]) != shape:
                raise UserError('%s holds %s with shape %s, but this network has %s: it was '
                                'trained with another network (compare its args.json: --arch, '
                                '--filters, --repeat, --scales, nclass)'
                                % (path, name, saved[name], shape))
        self.saver.restore(session, path)
