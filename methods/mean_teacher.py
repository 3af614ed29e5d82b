"""Mean teacher (Tarvainen & Valpola 2017), the reference's `mean_teacher.py`: the EMA model's
prediction on one view is the target of the model's prediction on the other view.
(The reference's default --wd is 0.2 for this method; --wd is a common flag here, 0.02.)"""

import tensorflow.compat.v1 as tf

from libml import consistency
from methods import pi_model

NAME = 'mean_teacher'
NEEDS_UNLABELED = True
FLAGS = [consistency.CONSISTENCY_WEIGHT._replace(default=50.), consistency.WARMUP_POS]


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one mean-teacher step and the scalars to log."""
    loss_xe = pi_model.labeled_loss(labeled_batch, classify, nclass)
    view_1, view_2 = tf.unstack(unlabeled_batch['image'], axis=1)[:2]
    teacher = classify(view_1, training=True, update_stats=False, teacher=True)
    loss_mt = pi_model.squared_consistency(teacher, classify(view_2, training=True,
                                                             update_stats=False))
    return dict(loss=pi_model.weighted_total(loss_xe, loss_mt, hp, images_seen), xe=loss_xe,
                mt=loss_mt)
