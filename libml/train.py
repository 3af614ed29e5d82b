"""The training loop: session, checkpoints and resume, progress bar, summaries, evaluation per epoch."""

import contextlib
import glob
import os
import time

import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

import methods
from libml import data, evaluation, events, graph, graph_audit, run_folder, runlock
from libml.stops import StopSignals, default_resume_command, signal_name
from libml.utils import Stopped, UserError, error_text, write_problem

SUMMARY_EVERY_NIMG = 1024  # loss summaries about every kimg, and at least 16 per epoch


def input_pipelines(dataset, hp, device, method):
    """(labeled_batch, unlabeled_batch or None) for each replica of this process, from its shard.
    Where the NPU sinks the loop, one initializable iterator feeds both (the adapter's rule)."""
    data.check_shards(dataset, device.cluster.replicas)
    sink = device.iterations_per_loop > 1
    pipelines = []
    for shard in device.input_shards():
        labeled = data.labeled_pipeline(dataset, hp['batch'], hp['augment'], shard=shard)
        if not method.NEEDS_UNLABELED:
            pipelines.append((data.batches(labeled, sink), None))
            continue
        unlabeled = data.unlabeled_pipeline(dataset, methods.unlabeled_batch(method, hp),
                                            hp['augment'], shard=shard,
                                            views=methods.unlabeled_views(method))
        if sink:
            pipelines.append(data.batches(tf.data.Dataset.zip((labeled, unlabeled)), True))
        else:
            pipelines.append((data.batches(labeled), data.batches(unlabeled)))
    return pipelines


def training_graph(dataset, hp, device, method, seed=0):
    """The ops of build_graph for this process's replicas, each fed from its own input shard, plus
    'barrier' (every rank runs it before leaving) and 'broadcast' (None in one process). A seed
    is offset by the rank, so each worker draws its own augmentations and MixUp partners."""
    if seed:
        tf.set_random_seed(seed + device.cluster.rank)
    pipelines = input_pipelines(dataset, hp, device, method)
    ops = graph.build_graph(hp, dataset.shape, dataset.nclass, device, method, pipelines=pipelines)
    ops['barrier'] = device.barrier_op()
    ops['broadcast'] = device.broadcast_op()  # run after init or restore: rank 0's values win
    # The step in exact float32 parts (multiples of 4096, remainder), averaged over the workers.
    step = tf.cast(ops['step'], tf.int64)
    ops['workers_step'] = device.worker_mean_op(
        tf.cast(tf.stack([step // 4096, step % 4096]), tf.float32))
    return ops


def check_loop_sinking(hp, device):
    """UserError unless epochs, checkpoints and the run's end fall on a device loop's boundary.
    Without loop sinking any batch goes: a period ends at the first step at or past it."""
    loop = device.iterations_per_loop
    if loop == 1:
        return
    images_per_loop = loop * device.global_batch(hp['batch'])
    periods = [('--%s=%d' % (flag, hp[flag]), hp[flag] << 10) for flag in ('report_kimg', 'save_kimg')]
    periods.append(('the run\'s total (--train_kimg/--epochs)', hp['total_nimg']))
    for what, nimg in periods:
        if nimg % images_per_loop:
            raise UserError('%s is %d images, not a multiple of the %d images of one device loop '
                            '(--iterations_per_loop=%d x --batch=%d x %d replicas); change one of '
                            'them' % (what, nimg, images_per_loop, loop, hp['batch'],
                                      device.cluster.replicas))


class Trainer(object):
    """Owns one run folder: TRAIN_DIR/DATASET/EXPERIMENT/{tf,args}/, result.txt, stats.json."""

    def __init__(self, run_dir, hp, dataset, device, method, seed=0):
        self.run_dir = run_dir
        self._saved_step, self._saved_path = None, ''  # this run's newest checkpoint
        self.hp = hp
        self.dataset = dataset
        self.device = device
        self.graph = tf.Graph()
        with self.graph.as_default():
            check_loop_sinking(hp, device)
            self.ops = training_graph(dataset, hp, device, method, seed)
            graph_audit.check_npu_step(device.name, self.graph, self.ops['train_op'])  # NPU: op list
            self.start_inputs = tf.group(*tf.get_collection(data.ITERATOR_INITIALIZERS))
            # Relative paths in tf/checkpoint: a run folder copied elsewhere (OBS, a new /cache) resumes.
            self.saver = tf.train.Saver(graph.saved_variables(), max_to_keep=hp['keep_ckpt'],
                                        save_relative_paths=True)
            self.init_op = tf.global_variables_initializer()
            # Built before finalize(): savers add ops to the graph.
            self.fine_tune = {reset: run_folder.CheckedRestore(run_folder.fine_tune_variables(reset))
                              for reset in (False, True)}
            self.model_restore = run_folder.CheckedRestore(run_folder.model_variables())
        if device.iterations_per_loop == 1:  # else finalized once the loop is set (_train)
            self.graph.finalize()

    @property
    def checkpoint_dir(self):
        return run_folder.checkpoint_dir(self.run_dir)

    def _session(self):
        return self.device.session(self.graph)

    def _evaluator(self, session):
        eval_sets = data.load_eval_sets(self.dataset)
        tune_images = data.load_tune_images(self.dataset, self.hp['tune_kimg'] << 10)
        return evaluation.Evaluator(session, self.ops, eval_sets, tune_images, self.dataset.class_names)

    def _start(self, session, load_checkpoint, reset_optimizer=False):
        """Resume from the newest checkpoint that restores, else initialise (optionally from
        another run).

        Every rank does the same; then the ranks check that they hold the same step and take rank
        0's variables (workers initialise their own, each with its own seed)."""
        if self.device.chief:
            run_folder.remove_partial_saves(self.checkpoint_dir)
        session.run(self.init_op)
        resumed = self._saved_path = run_folder.restore_newest(session, self.saver, self.checkpoint_dir)
        if resumed:
            print('Resumed from %s' % resumed)
        elif load_checkpoint:
            path = run_folder.checkpoint_path(load_checkpoint)
            self.fine_tune[reset_optimizer].restore(session, path)
            what = 'weights' if reset_optimizer else 'weights and optimizer state'
            print('Fine-tuning: %s (all but the classifier head) from %s' % (what, path))
        self._check_workers_agree(session)  # before the broadcast, which would hide a mismatch
        if self.ops['broadcast'] is not None:
            session.run(self.ops['broadcast'])
        session.run(self.start_inputs)

    def _check_workers_agree(self, session):
        """UserError on a worker whose step differs from the workers' mean: they resumed from
        different checkpoints (a collective of one step would then wait for ever on another)."""
        if self.ops['workers_step'] is None:
            return
        mean, step = session.run([self.ops['workers_step'], self.ops['step']])
        if abs(mean[0] - step // 4096) > 1e-3 or abs(mean[1] - step % 4096) > 1e-3:
            raise UserError('the %d workers start from different steps (this one, rank %d, from %d '
                            'images; the mean is %d): their run folders hold different newest '
                            'checkpoints; give every worker the same checkpoints (e.g. copy rank '
                            '0\'s tf/ folder) and rerun' % (
                                self.device.cluster.workers, self.device.cluster.rank, step,
                                mean[0] * 4096 + mean[1]))

    def train(self, load_checkpoint='', reset_optimizer=False):
        """Train to the end; rank 0 holds the run folder's lock. On SIGTERM / SIGINT: finish the
        step, save, and raise Stopped (exit status 128 + the signal)."""
        print(self.device.describe())
        print('Run folder %s' % self.run_dir)
        lock = runlock.RunLock(self.run_dir) if self.device.chief else None
        with lock if lock else contextlib.nullcontext(), StopSignals() as signals:
            try:
                self._train(load_checkpoint, reset_optimizer, signals)
            except tf.errors.OpError as e:
                if self.device.cluster.workers == 1:
                    raise
                # A collective fails on every rank once one worker is gone: say so in one line.
                raise UserError('training stopped: another of the %d workers is gone or unreachable '
                                '(%s: %s); rerun the same command to resume from the last checkpoint'
                                % (self.device.cluster.workers, type(e).__name__, error_text(e)))
        if signals.stopped_at is not None:
            raise Stopped(self._stop_line(signals), 128 + signals.exit_signal)

    def _stop_line(self, signals):
        step = signals.stopped_at
        where = ('saved %s' % self._saved_path if self.device.chief and self._saved_path
                 else 'rank 0 saved the checkpoint')
        why = (signal_name(signals.signum) if signals.signum is not None
               else 'the stop request of another rank')
        return ('Stopped by %s at %d images (kimg %d): %s; to resume, rerun: %s'
                % (why, step, step >> 10, where, default_resume_command()))

    def _train(self, load_checkpoint, reset_optimizer, signals):
        with self._session() as session:
            self._start(session, load_checkpoint, reset_optimizer)
            if self.device.iterations_per_loop > 1:  # adds the loop variables, then no more ops
                self.ops['train_op'] = self.device.sink_loop(session, self.ops['train_op'])
                self.graph.finalize()
            if self.device.chief:  # rank 0 alone writes and evaluates
                # After a good start: a refused --load_checkpoint writes nothing.
                run_folder.write_args(self.run_dir, self.hp)
                writer = events.ScalarWriter(self.checkpoint_dir)
                try:
                    self._loop(session, self._evaluator(session), writer, signals)
                finally:
                    writer.close()
            else:
                self._loop(session, None, None, signals)
            session.run(self.ops['barrier'])
        self.device.leave()

    def _loop(self, session, evaluator, writer, signals):
        """Train to the end (or a requested stop); the chief (rank 0) alone logs, saves and
        reports (others pass None). Periods end at the first step at or past them."""
        hp, chief = self.hp, self.device.chief
        step = session.run(self.ops['step'])
        self._saved_step = step if self._saved_path else None  # resumed: never saved again
        total_nimg = hp['total_nimg']
        report_nimg = hp['report_kimg'] << 10
        if step >= total_nimg:
            print('Training already complete at %d images (%d kimg).' % (step, step >> 10))
            if chief and not os.path.exists(run_folder.result_path(self.run_dir)):
                self._report(session, evaluator, writer, step)
            return
        fetch = dict(train_op=self.ops['train_op'], step=self.ops['step_after_update'],
                     losses=self.ops['losses'], stop_vote=self.ops['stop_vote'])
        epochs = -(-total_nimg // report_nimg)
        speed = TrainingSpeed()
        while step < total_nimg:
            epoch = step // report_nimg
            epoch_end = min((epoch + 1) * report_nimg, total_nimg)
            bar = tqdm(total=epoch_end - epoch * report_nimg, initial=step - epoch * report_nimg,
                       unit='img', desc='Epoch %d/%d' % (epoch + 1, epochs), leave=False,
                       mininterval=1., disable=not chief)
            try:  # the bar's line is cleared before any error line
                step, history, stop = self._epoch(session, fetch, step, epoch_end, writer,
                                                  signals, bar, speed)
            finally:
                bar.close()
            if stop:
                if chief:
                    self._save(session, step)
                signals.stopped_at = step
                return
            if chief:
                self._report(session, evaluator, writer, step, _mean_losses(history), speed.epoch())
                self._save(session, step)

    def _epoch(self, session, fetch, step, epoch_end, writer, signals, bar, speed):
        """Steps from `step` to the first at or past `epoch_end`, or to a requested stop; loss
        summaries about every kimg and at the end. Returns (step, losses of each step, stopped)."""
        chief, alone = self.device.chief, self.device.cluster.workers == 1
        summary_nimg = max(1, min(SUMMARY_EVERY_NIMG, (self.hp['report_kimg'] << 10) // 16))
        save_nimg = self.hp['save_kimg'] << 10
        history, unwritten = [], []
        stop = signals.requested and alone  # e.g. asked during the last evaluation
        while step < epoch_end and not stop:
            signals.share(session, self.ops['stop_request'])
            started = time.time()
            out = session.run(fetch)
            previous, step = step, out['step']
            speed.add(step - previous, time.time() - started)
            if not np.isfinite(out['losses']['loss']) and not self.device.loss_scaling:
                self._stop_diverged(previous)
            bar.update(min(step, epoch_end) - previous)
            history.append(out['losses'])
            unwritten.append(out['losses'])
            # Ranks stop on the shared vote, so all after the same step; one process at once.
            stop = out['stop_vote'] > 0 or (signals.requested and alone)
            if chief and (step // summary_nimg != previous // summary_nimg or step >= epoch_end
                          or stop):
                writer.add_scalars(step, _mean_losses(unwritten), 'losses/')
                unwritten = []
            if chief and step // save_nimg != previous // save_nimg and step < epoch_end:
                self._save(session, step)
        return step, history, stop

    def _stop_diverged(self, step):
        """The loss went non-finite on the weights of `step`: drop checkpoints from there on, stop."""
        kept = run_folder.drop_checkpoints_from(self.checkpoint_dir, step) if self.device.chief else ''
        raise UserError('training diverged: the loss is not finite at %d images (kimg %d); %s; '
                        'lower --lr or check the data' % (
                            step, step >> 10, 'newest good checkpoint %s' % kept if kept
                            else 'no good checkpoint was saved'))

    def _save(self, session, step):
        """A checkpoint of `step` (once per step). A failed save (full disk, quota, read-only
        folder) removes its own partial files and stops in one line; older checkpoints stay."""
        if step == self._saved_step:
            return
        prefix = os.path.join(self.checkpoint_dir, run_folder.CHECKPOINT_PREFIX)
        existed = os.path.exists('%s-%d.index' % (prefix, step))
        try:
            # No .meta file: the graph is always rebuilt from args/args.json.
            self._saved_path = self.saver.save(session, prefix, global_step=step,
                                               write_meta_graph=False)
        except (tf.errors.OpError, OSError) as e:
            run_folder.remove_partial_saves(self.checkpoint_dir)
            if not existed:
                for path in glob.glob('%s-%d.*' % (prefix, step)):
                    os.remove(path)
            previous = run_folder.checkpoints_newest_first(self.checkpoint_dir)
            raise UserError('could not save the checkpoint of %d images in %s (%s); %s; free space '
                            'there (or fix its permissions) and rerun the same command to resume'
                            % (step, self.checkpoint_dir, write_problem(e) or error_text(e),
                               'the previous checkpoint %s is intact' % previous[0] if previous
                               else 'no earlier checkpoint exists'))
        self._saved_step = step

    def _report(self, session, evaluator, writer, step, losses=None, images_per_second=None):
        """Evaluate, print the table, write result.txt / stats.json and the summaries."""
        report = evaluator.evaluate()
        evaluation.write_report(self.run_dir, report, step)
        writer.add_scalars(step, dict(evaluation.summary_values(report)))
        progress = {'progress/kimg': step / 1024.,
                    'progress/fraction': step / float(self.hp['total_nimg'])}
        if images_per_second:
            progress['progress/images_per_second'] = images_per_second
        writer.add_scalars(step, progress)
        line = 'kimg %d' % (step >> 10)
        if losses:
            line += '  ' + '  '.join('%s %.4f' % kv for kv in sorted(losses.items()))
        if images_per_second:
            line += '  %.1f img/s' % images_per_second
        tqdm.write(line + '\n' + evaluation.format_table(report['table']))
        return report

    def evaluate_checkpoint(self, checkpoint):
        """Evaluate one checkpoint (no training): print the table, write result.txt and stats.json."""
        path = run_folder.checkpoint_path(checkpoint)
        with self._session() as session:
            session.run(self.init_op)
            self.model_restore.restore(session, path)
            step = session.run(self.ops['step'])
            report = self._evaluator(session).evaluate()
        evaluation.write_report(self.run_dir, report, step)
        print('Checkpoint %s at %d images (%d kimg)' % (path, step, step >> 10))
        print(evaluation.format_table(report['table']))
        return report


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
