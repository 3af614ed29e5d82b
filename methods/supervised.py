"""The fully supervised baseline: cross-entropy on the augmented labeled batch only."""

import tensorflow.compat.v1 as tf

NAME = 'supervised'
NEEDS_UNLABELED = False
FLAGS = []


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """Cross-entropy of the labeled batch; the unlabeled data is not read."""
    del unlabeled_batch, hp, images_seen
    logits = classify(labeled_batch['image'], training=True, update_stats=True)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(
        labels=tf.one_hot(labeled_batch['label'], nclass), logits=logits))
    return dict(loss=loss, xe=loss)
