"""A run's TensorBoard event files: written synchronously, scalar curves read back."""

import collections
import glob
import os
import socket
import time

import tensorflow.compat.v1 as tf

from libml.utils import UserError, write_problem


def event_files(run_dir):
    """The event files of a run folder (written under RUN/tf/), oldest first."""
    files = sorted(glob.glob(os.path.join(run_dir, 'tf', 'events.out.tfevents.*')))
    if not files:
        raise UserError('%s has no TensorBoard event files under tf/; is it a run folder '
                        '(TRAIN_DIR/DATASET/EXPERIMENT)?' % run_dir)
    return files


def read_scalars(run_dir):
    """{tag: [(step, value), ...]} sorted by step; a resumed run's repeated steps keep the last value."""
    by_tag = collections.defaultdict(dict)
    for path in event_files(run_dir):
        try:
            for event in tf.train.summary_iterator(path):
                for value in event.summary.value:
                    by_tag[value.tag][event.step] = value.simple_value
        except tf.errors.DataLossError:
            pass  # A run killed mid-write leaves a truncated last record; the rest is valid.
    return {tag: sorted(points.items()) for tag, points in by_tag.items()}


class ScalarWriter(object):
    """A TensorBoard event file written in the caller's thread (tf.summary.FileWriter writes from
    a thread of its own, whose failure on a full disk prints tracebacks, or on TF 1.15 hangs the
    next flush): a failed write is one UserError here, where training can stop cleanly."""

    def __init__(self, folder):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, 'events.out.tfevents.%d.%s.%d' % (
            int(time.time()), socket.gethostname(), os.getpid()))
        self._writer = self._guard(tf.io.TFRecordWriter, self.path)
        self._write(tf.Event(wall_time=time.time(), file_version='brain.Event:2'))

    def add_scalars(self, step, values, prefix=''):
        """One event at `step` holding PREFIX+tag: value for each of `values`."""
        summary = tf.Summary(value=[tf.Summary.Value(tag=prefix + tag, simple_value=float(value))
                                    for tag, value in sorted(values.items())])
        self._write(tf.Event(wall_time=time.time(), step=int(step), summary=summary))

    def _write(self, event):
        self._guard(self._writer.write, event.SerializeToString())
        self._guard(self._writer.flush)

    def _guard(self, function, *args):
        try:
            return function(*args)
        except Exception as e:  # pylint: disable=broad-except  # re-raised unless a disk problem
            problem = write_problem(e)
            if not problem:
                raise
            raise UserError('could not write the TensorBoard events %s: %s; free space there (or '
                            'fix its permissions) and rerun the same command to resume from the '
                            'last checkpoint' % (self.path, problem))

    def close(self):
        try:
            self._writer.close()
        except Exception:  # pylint: disable=broad-except  # already reported by the failed write
            pass
