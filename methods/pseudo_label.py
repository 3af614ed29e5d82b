"""Pseudo-label (Lee 2013), the reference's `pseudo_label.py`: cross-entropy of the unlabeled
predictions against their own arg-max where the top probability exceeds --threshold.

As the reference, the loss is mean(cross-entropy) * mean(mask): its [N] losses times its [N, 1]
mask broadcast to N x N before the mean (not the mean over the confident rows)."""

import tensorflow.compat.v1 as tf

from libml import consistency
from libml.hparams import Flag
from methods import pi_model

NAME = 'pseudo_label'
NEEDS_UNLABELED = True
FLAGS = [consistency.CONSISTENCY_WEIGHT._replace(default=1.), consistency.WARMUP_POS,
         Flag('float', 'threshold', 0.95, 'Pseudo-label confidence threshold.',
              lambda v: 0 <= v < 1, 'in [0, 1)')]


def pseudo_label_loss(logits, threshold):
    """mean(CE(argmax, logits)) * fraction of rows whose top probability exceeds `threshold`."""
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.argmax(logits, axis=-1),
                                                          logits=logits)
    confident = tf.reduce_any(tf.nn.softmax(logits) > threshold, axis=-1)
    return tf.reduce_mean(loss) * tf.reduce_mean(tf.cast(confident, loss.dtype))


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one pseudo-label step (one view of the unlabeled batch is used)."""
    images = tf.unstack(unlabeled_batch['image'], axis=1)[0]
    loss_xe = pi_model.labeled_loss(labeled_batch, classify, nclass)
    loss_pl = pseudo_label_loss(classify(images, training=True, update_stats=False), hp['threshold'])
    return dict(loss=pi_model.weighted_total(loss_xe, loss_pl, hp, images_seen), xe=loss_xe,
                pl=loss_pl)
