"""Pi-model (Laine & Aila 2017), the reference's `pi_model.py`: the prediction on one augmented
view of an unlabeled image is the fixed target of the prediction on the other."""

import tensorflow.compat.v1 as tf

from libml import consistency

NAME = 'pi_model'
NEEDS_UNLABELED = True
FLAGS = [consistency.CONSISTENCY_WEIGHT, consistency.WARMUP_POS]


def squared_consistency(target_logits, logits):
    """Mean over rows and classes of (softmax(target) - softmax(logits))^2; the target is fixed."""
    target = tf.nn.softmax(tf.stop_gradient(target_logits))
    return tf.reduce_mean(tf.square(target - tf.nn.softmax(logits)))


def labeled_loss(labeled_batch, classify, nclass):
    """Cross-entropy of the labeled batch; this first pass alone updates batch-norm statistics."""
    logits = classify(labeled_batch['image'], training=True, update_stats=True)
    return consistency.cross_entropy(tf.one_hot(labeled_batch['label'], nclass), logits)


def weighted_total(loss_xe, loss_u, hp, images_seen):
    """xe + consistency_weight * warm-up * the unlabeled loss."""
    warmup = consistency.warmup_by_position(images_seen, hp['warmup_pos'], hp['train_kimg'])
    return loss_xe + loss_u * warmup * hp['consistency_weight']


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one Pi-model step and the scalars to log."""
    loss_xe = labeled_loss(labeled_batch, classify, nclass)
    view_1, view_2 = tf.unstack(unlabeled_batch['image'], axis=1)[:2]
    teacher = classify(view_1, training=True, update_stats=False)
    loss_pm = squared_consistency(teacher, classify(view_2, training=True, update_stats=False))
    return dict(loss=weighted_total(loss_xe, loss_pm, hp, images_seen), xe=loss_xe, pm=loss_pm)
