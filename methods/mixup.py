"""MixUp, semi-supervised (Zhang et al. 2018 as the reference's `mixup.py`): the labeled batch and
the unlabeled batch, each mixed with its own reverse; the unlabeled targets are the model's
predictions, mixed the same way. Loss: cross-entropy on both. The labeled-only baseline: fs_mixup."""

import tensorflow.compat.v1 as tf

from libml import consistency, layers
from methods import fs_mixup, realmix

NAME = 'mixup'
NEEDS_UNLABELED = True
FLAGS = [realmix.BETA._replace(default=0.5)]


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one MixUp step (one view of the unlabeled batch is used)."""
    del images_seen
    images_x, targets_x = fs_mixup.mix_labeled(labeled_batch, hp['beta'], nclass)
    loss_xe = consistency.cross_entropy(targets_x, classify(images_x, training=True,
                                                            update_stats=True))
    images_u = tf.unstack(unlabeled_batch['image'], axis=1)[0]
    lam = layers.sample_beta(hp['beta'], [int(images_u.shape[0])])
    guess = tf.nn.softmax(classify(images_u, training=True, update_stats=False))
    images_u, targets_u, _ = layers.mix_with_reverse(images_u, guess, tf.maximum(lam, 1 - lam))
    loss_xeu = consistency.cross_entropy(tf.stop_gradient(targets_u),
                                         classify(images_u, training=True, update_stats=False))
    return dict(loss=loss_xe + loss_xeu, xe=loss_xe, xeu=loss_xeu)
