"""MixUp-supervised, the reference's `fs_mixup` baseline: MixUp on the labeled batch only.

Each example is mixed with the one at the mirrored position of the batch, weight max(lam, 1 - lam)
with lam ~ Beta(beta, beta), and trained with cross-entropy on the mixed targets. Before
names_revision 2 this was --method=mixup (now the reference's semi-supervised MixUp).
"""

import tensorflow.compat.v1 as tf

from libml import consistency, layers
from methods import realmix

NAME = 'fs_mixup'
NEEDS_UNLABELED = False
FLAGS = [realmix.BETA._replace(default=0.5)]


def mix_labeled(labeled_batch, beta, nclass):
    """The labeled batch mixed with its reverse: (images, targets)."""
    images = labeled_batch['image']
    lam = layers.sample_beta(beta, [int(images.shape[0])])
    mixed_images, mixed_targets, _ = layers.mix_with_reverse(
        images, tf.one_hot(labeled_batch['label'], nclass), tf.maximum(lam, 1 - lam))
    return mixed_images, mixed_targets


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """Cross-entropy of the MixUp of the labeled batch with its reverse."""
    del unlabeled_batch, images_seen
    images, targets = mix_labeled(labeled_batch, hp['beta'], nclass)
    loss = consistency.cross_entropy(targets, classify(images, training=True, update_stats=True))
    return dict(loss=loss, xe=loss)
