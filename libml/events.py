"""Reading scalar curves back from a run's TensorBoard event files."""

import collections
import glob
import os

import tensorflow.compat.v1 as tf

from libml.utils import UserError


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
