"""Interpolation consistency training (Verma et al. 2019), the reference's `ict.py`: the prediction
on a MixUp of unlabeled images (each with its mirror in the batch) should be the same MixUp of the
EMA teacher's predictions."""

import tensorflow.compat.v1 as tf

from libml import consistency, layers
from methods import pi_model, realmix

NAME = 'ict'
NEEDS_UNLABELED = True
FLAGS = [consistency.CONSISTENCY_WEIGHT._replace(default=50.), consistency.WARMUP_POS,
         realmix.BETA._replace(default=0.5)]


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one ICT step and the scalars to log (one view of the unlabeled batch is used)."""
    images = tf.unstack(unlabeled_batch['image'], axis=1)[0]
    lam = layers.sample_beta(hp['beta'], [int(images.shape[0])])
    lam = tf.maximum(lam, 1 - lam)
    loss_xe = pi_model.labeled_loss(labeled_batch, classify, nclass)
    teacher = tf.nn.softmax(tf.stop_gradient(classify(images, training=True, update_stats=False,
                                                      teacher=True)))
    mixed_images, mixed_targets, _ = layers.mix_with_reverse(images, teacher, lam)
    student = tf.nn.softmax(classify(mixed_images, training=True, update_stats=False))
    loss_mt = tf.reduce_mean(tf.square(mixed_targets - student))
    return dict(loss=pi_model.weighted_total(loss_xe, loss_mt, hp, images_seen), xe=loss_xe,
                mt=loss_mt)
