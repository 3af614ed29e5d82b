"""The reference's fully supervised baseline `fs_baseline`: cross-entropy on the labeled batch,
targets smoothed towards uniform by --smoothing (--method=supervised is it without smoothing)."""

import tensorflow.compat.v1 as tf

from libml import consistency
from libml.hparams import Flag

NAME = 'fs_baseline'
NEEDS_UNLABELED = False
FLAGS = [Flag('float', 'smoothing', 0.001, 'Label smoothing: targets t - smoothing * (t - 1/C).',
              lambda v: 0 <= v <= 1, 'in [0, 1]')]


def supervised_losses(labeled_batch, classify, nclass, smoothing):
    """Cross-entropy of the labeled batch against smoothed one-hot targets."""
    targets = tf.one_hot(labeled_batch['label'], nclass)
    targets -= smoothing * (targets - 1. / nclass)
    logits = classify(labeled_batch['image'], training=True, update_stats=True)
    loss = consistency.cross_entropy(targets, logits)
    return dict(loss=loss, xe=loss)


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one step; the unlabeled data is not read."""
    del unlabeled_batch, images_seen
    return supervised_losses(labeled_batch, classify, nclass, hp['smoothing'])
