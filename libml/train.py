"""The training loop: session, checkpoints and resume, progress bar, summaries, evaluation per epoch."""

import glob
import json
import os
import shutil
import time

import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from libml import data, evaluation, graph
from libml.utils import UserError, write_text_atomic

SUMMARY_EVERY_NIMG = 1024  # loss summaries about every kimg, and at least 16 per epoch


def input_pipelines(dataset, hp, device, needs_unlabeled):
    """(labeled_batch, unlabeled_batch or None) for each replica of this process, from its shard.
    Where the NPU sinks the loop, one initializable iterator feeds both (the adapter's rule)."""
    data.check_shards(dataset, device.cluster.replicas)
    sink = device.iterations_per_loop > 1
    pipelines = []
    for shard in device.input_shards():
        labeled = data.labeled_pipeline(dataset, hp['batch'], hp['augment'], shard=shard)
        if not needs_unlabeled:
            pipelines.append((data.batches(labeled, sink), None))
            continue
        unlabeled = data.unlabeled_pipeline(dataset, hp['batch'], hp['augment'], shard=shard)
        if sink:
            pipelines.append(data.batches(tf.data.Dataset.zip((labeled, unlabeled)), True))
        else:
            pipelines.append((data.batches(labeled), data.batches(unlabeled)))
    return pipelines


def training_graph(dataset, hp, device, method, seed=0):
    """The ops of build_graph for this process's replicas, each fed from its own input shard, plus
    'barrier' (every rank runs it before leaving). A seed is offset by the rank, so each worker
    draws its own augmentations and MixUp partners."""
    if seed:
        tf.set_random_seed(seed + device.cluster.rank)
    pipelines = input_pipelines(dataset, hp, device, method.NEEDS_UNLABELED)
    ops = graph.build_graph(hp, dataset.shape, dataset.nclass, device, method, pipelines=pipelines)
    ops['barrier'] = device.barrier_op()
    return ops


def check_loop_sinking(hp, device):
    """UserError unless epochs and checkpoints end on a device loop's boundary."""
    loop = device.iterations_per_loop
    images_per_loop = loop * device.global_batch(hp['batch'])
    for flag in ('report_kimg', 'save_kimg'):
        if (hp[flag] << 10) % images_per_loop:
            raise UserError('--%s=%d is %d images, not a multiple of the %d images of one device '
                            'loop (--iterations_per_loop=%d x --batch=%d x %d replicas); change '
                            'one of them' % (flag, hp[flag], hp[flag] << 10, images_per_loop, loop,
                                             hp['batch'], device.cluster.replicas))


class Trainer(object):
    """Owns one run folder: TRAIN_DIR/DATASET/EXPERIMENT/{tf,args}/, result.txt, stats.json."""

    def __init__(self, run_dir, hp, dataset, device, method, seed=0):
        self.run_dir = run_dir
        self.hp = hp
        self.dataset = dataset
        self.device = device
        self.graph = tf.Graph()
        with self.graph.as_default():
            check_loop_sinking(hp, device)
            self.ops = training_graph(dataset, hp, device, method, seed)
            self.broadcast = device.broadcast_op()  # rank 0's weights win
            self.start_inputs = tf.group(*tf.get_collection(data.ITERATOR_INITIALIZERS))
            # Relative paths in tf/checkpoint: a run folder copied elsewhere (OBS, a new /cache) resumes.
            self.saver = tf.train.Saver(max_to_keep=hp['keep_ckpt'], save_relative_paths=True)
            self.init_op = tf.global_variables_initializer()
            # Built before finalize(): savers add ops to the graph.
            self.fine_tune = {reset: CheckedRestore(_fine_tune_variables(reset)) for reset in (False, True)}
            self.model_restore = CheckedRestore(_model_variables())
        if device.iterations_per_loop == 1:  # else finalized once the loop is set (_train)
            self.graph.finalize()

    @property
    def checkpoint_dir(self):
        return os.path.join(self.run_dir, 'tf')

    def _session(self):
        return self.device.session(self.graph)

    def _evaluator(self, session):
        eval_sets = data.load_eval_sets(self.dataset)
        tune_images = data.load_tune_images(self.dataset, self.hp['tune_kimg'] << 10)
        return evaluation.Evaluator(session, self.ops, eval_sets, tune_images, self.dataset.class_names)

    def _save_args(self):
        write_text_atomic(args_path(self.run_dir), json.dumps(self.hp, indent=2, sort_keys=True) + '\n')

    def _start(self, session, load_checkpoint, reset_optimizer=False):
        """Resume from the newest checkpoint, else initialise (optionally from another run).

        Every rank does the same (multi-worker initialisers hold collectives); then HCCL ranks
        take rank 0's variables."""
        if self.device.chief:
            _remove_partial_saves(self.checkpoint_dir)
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest:
            self.saver.restore(session, latest)
            print('Resumed from %s' % latest)
        else:
            session.run(self.init_op)
            if load_checkpoint:
                path = checkpoint_path(load_checkpoint)
                self.fine_tune[reset_optimizer].restore(session, path)
                what = 'weights' if reset_optimizer else 'weights and Adam state'
                print('Fine-tuning: %s (all but the classifier head) from %s' % (what, path))
        if self.broadcast is not None:
            session.run(self.broadcast)
        session.run(self.start_inputs)

    def train(self, load_checkpoint='', reset_optimizer=False):
        print(self.device.describe())
        print('Run folder %s' % self.run_dir)
        try:
            self._train(load_checkpoint, reset_optimizer)
        except tf.errors.OpError as e:
            if self.device.cluster.workers == 1:
                raise
            # A collective fails on every rank once one worker is gone: say so in one line.
            raise UserError('training stopped: another of the %d workers is gone or unreachable '
                            '(%s: %s); rerun the same command to resume from the last checkpoint'
                            % (self.device.cluster.workers, type(e).__name__,
                               ' '.join(str(e.message).split())[:200]))

    def _train(self, load_checkpoint, reset_optimizer):
        with self._session() as session:
            self._start(session, load_checkpoint, reset_optimizer)
            if self.device.iterations_per_loop > 1:  # adds the loop variables, then no more ops
                self.ops['train_op'] = self.device.sink_loop(session, self.ops['train_op'])
                self.graph.finalize()
            if self.device.chief:  # rank 0 alone writes and evaluates
                self._save_args()  # after a good start: a refused --load_checkpoint writes nothing
                writer = tf.summary.FileWriter(self.checkpoint_dir)
                try:
                    self._loop(session, self._evaluator(session), writer)
                finally:
                    writer.close()
            else:
                self._loop(session, None, None)
            session.run(self.ops['barrier'])
        self.device.leave()

    def _loop(self, session, evaluator, writer):
        """Train to the end; the chief (rank 0) alone logs, saves and reports (others pass None)."""
        hp, chief = self.hp, self.device.chief
        step = session.run(self.ops['step'])
        report_nimg, save_nimg = hp['report_kimg'] << 10, hp['save_kimg'] << 10
        total_nimg = hp['total_nimg']
        if step >= total_nimg:
            print('Training already complete at %d images (%d kimg).' % (step, step >> 10))
            if chief and not os.path.exists(os.path.join(self.run_dir, 'result.txt')):
                self._report(session, evaluator, writer, step)
            return
        fetch = dict(train_op=self.ops['train_op'], step=self.ops['step'], losses=self.ops['losses'])
        summary_every = max(1, min(SUMMARY_EVERY_NIMG, report_nimg // 16)
                            // self.device.global_batch(hp['batch']))
        epochs = -(-total_nimg // report_nimg)
        speed = TrainingSpeed()
        while step < total_nimg:
            epoch = step // report_nimg
            epoch_end = min((epoch + 1) * report_nimg, total_nimg)
            bar = tqdm(total=epoch_end - epoch * report_nimg, initial=step - epoch * report_nimg,
                       unit='img', desc='Epoch %d/%d' % (epoch + 1, epochs), leave=False,
                       mininterval=1., disable=not chief)
            history = []
            while step < epoch_end:
                started = time.time()
                out = session.run(fetch)
                previous, step = step, out['step']
                speed.add(step - previous, time.time() - started)
                if not np.isfinite(out['losses']['loss']) and not self.device.loss_scaling:
                    bar.close()
                    self._stop_diverged(previous)
                bar.update(step - previous)
                history.append(out['losses'])
                if chief and len(history) % summary_every == 0:
                    _write_scalars(writer, step, _mean_losses(history[-summary_every:]), 'losses/')
                if chief and step // save_nimg != previous // save_nimg and step < epoch_end:
                    self._save(session, step)
            bar.close()
            if chief:
                self._report(session, evaluator, writer, step, _mean_losses(history), speed.epoch())
                self._save(session, step)

    def _stop_diverged(self, step):
        """The loss went non-finite on the weights of `step`: drop checkpoints from there on, stop."""
        kept = _drop_checkpoints_from(self.checkpoint_dir, step) if self.device.chief else ''
        raise UserError('training diverged: the loss is not finite at %d images (kimg %d); %s; '
                        'lower --lr or check the data' % (
                            step, step >> 10, 'newest good checkpoint %s' % kept if kept
                            else 'no good checkpoint was saved'))

    def _save(self, session, step):
        # No .meta file: the graph is always rebuilt from args/args.json.
        self.saver.save(session, os.path.join(self.checkpoint_dir, 'model.ckpt'), global_step=step,
                        write_meta_graph=False)

    def _report(self, session, evaluator, writer, step, losses=None, images_per_second=None):
        """Evaluate, print the table, write result.txt / stats.json and the summaries."""
        report = evaluator.evaluate()
        evaluation.write_report(self.run_dir, report, step)
        _write_scalars(writer, step, dict(evaluation.summary_values(report)))
        progress = {'progress/kimg': step / 1024.,
                    'progress/fraction': step / float(self.hp['total_nimg'])}
        if images_per_second:
            progress['progress/images_per_second'] = images_per_second
        _write_scalars(writer, step, progress)
        line = 'kimg %d' % (step >> 10)
        if losses:
            line += '  ' + '  '.join('%s %.4f' % kv for kv in sorted(losses.items()))
        if images_per_second:
            line += '  %.1f img/s' % images_per_second
        tqdm.write(line + '\n' + evaluation.format_table(report['table']))
        writer.flush()
        return report

    def evaluate_checkpoint(self, checkpoint):
        """Evaluate one checkpoint (no training): print the table, write result.txt and stats.json."""
        path = checkpoint_path(checkpoint)
        with self._session() as session:
            session.run(self.init_op)
            self.model_restore.restore(session, path)
            step = session.run(self.ops['step'])
            report = self._evaluator(session).evaluate()
        evaluation.write_report(self.run_dir, report, step)
        print('Checkpoint %s at %d images (%d kimg)' % (path, step, step >> 10))
        print(evaluation.format_table(report['table']))
        return report


def args_path(run_dir):
    """Where a run folder keeps every parameter of its run."""
    return os.path.join(run_dir, 'args', 'args.json')


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


def _remove_partial_saves(folder):
    """Delete what a save killed midway leaves (TensorFlow's *_temp* folders, *.tmp* files)."""
    for path in glob.glob(os.path.join(folder, '*_temp*')) + glob.glob(os.path.join(folder, '*.tmp*')):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _is_head(name):
    return '/dense' in name


def _model_variables():
    """What evaluation needs: weights, batch-norm statistics, EMA shadows and the step; no Adam."""
    return [v for v in tf.global_variables()
            if (v.op.name.startswith('classify/') and '/Adam' not in v.op.name)
            or v.op.name == 'global_step']


def _fine_tune_variables(reset_optimizer):
    """What --load_checkpoint restores, as the reference does: everything but the classifier head
    (weights, statistics, EMA shadows, Adam's slots and power accumulators); not the step."""
    keep = []
    for v in tf.global_variables():
        name = v.op.name
        if name.startswith('classify/') and not _is_head(name):
            if '/Adam' not in name or not reset_optimizer:
                keep.append(v)
        elif name.split('/')[-1] in ('beta1_power', 'beta2_power') and not reset_optimizer:
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
                hint = ('; --reset_optimizer starts Adam afresh' if '/Adam' in name
                        or name.endswith('_power') else '')
                raise UserError('%s does not hold %s: it was trained with another network or '
                                'method (compare its args.json: --arch, --filters, --repeat, '
                                '--scales)%s' % (path, name, hint))
            if list(saved[name]) != shape:
                raise UserError('%s holds %s with shape %s, but this network has %s: it was '
                                'trained with another network (compare its args.json: --arch, '
                                '--filters, --repeat, --scales, nclass)'
                                % (path, name, saved[name], shape))
        self.saver.restore(session, path)


def _drop_checkpoints_from(folder, step):
    """Delete checkpoints of `step` and later; point tf/checkpoint at the newest one left."""
    state = tf.train.get_checkpoint_state(folder)
    paths = list(state.all_model_checkpoint_paths) if state else []
    kept = [p for p in paths if int(p.rsplit('-', 1)[1]) < step]
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


class TrainingSpeed(object):
    """Images per second of the train steps alone (no evaluation, saving or summaries), per epoch.

    A process's first step is left out: it includes building the kernels (grappler, oneDNN).
    """

    def __init__(self):
        self.warm, self.images, self.seconds = False, 0, 0.

    def add(self, images, seconds):
        if self.warm:
            self.images += images
            self.seconds += seconds
        self.warm = True

    def epoch(self):
        """The epoch's rate (None when no timed step), then start counting the next epoch."""
        rate = self.images / self.seconds if self.seconds > 0 else None
        self.images, self.seconds = 0, 0.
        return rate


def _mean_losses(history):
    return {k: float(np.mean([h[k] for h in history])) for k in history[0]} if history else {}


def _write_scalars(writer, step, values, prefix=''):
    summary = tf.Summary(value=[tf.Summary.Value(tag=prefix + tag, simple_value=float(value))
                                for tag, value in values.items()])
    writer.add_summary(summary, step)
