"""MixUp-supervised, the reference's `fs_mixup` baseline: MixUp on the labeled batch only.

Each example is mixed with the one at the mirrored position of the (shuffled) batch, weight
max(lam, 1 - lam) with lam ~ Beta(beta, beta), and trained with cross-entropy on the mixed targets.
The reference's fs_mixup defaults to beta 0.5; here --beta is RealMix's flag (0.75 by default).
"""

import tensorflow.compat.v1 as tf

from libml import layers
from methods import realmix

NAME = 'mixup'
NEEDS_UNLABELED = False
FLAGS = [realmix.BETA]


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """Cross-entropy of the MixUp of the labeled batch with its reverse."""
    del unlabeled_batch, images_seen
    images = labeled_batch['image']
    count = int(images.shape[0])
    lam = layers.sample_beta(hp['beta'], [count])
    mixed_images, mixed_targets, _ = layers.mix_with(
        images, tf.one_hot(labeled_batch['label'], nclass), tf.maximum(lam, 1 - lam),
        tf.range(count - 1, -1, -1))
    logits = classify(mixed_images, training=True, update_stats=True)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(labels=mixed_targets,
                                                                      logits=logits))
    return dict(loss=loss, xe=loss)
