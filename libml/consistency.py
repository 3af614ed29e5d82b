"""Pieces the consistency methods share (Pi-model, mean teacher, ICT, VAT, pseudo-label):
the warm-up by position, KL divergence and entropy from logits, VAT's adversarial perturbation."""

import tensorflow.compat.v1 as tf

from libml import layers
from libml.hparams import Flag

WARMUP_POS = Flag('float', 'warmup_pos', 0.4, 'Fraction of --train_kimg over which the '
                  'unlabeled-loss weight ramps up linearly.', lambda v: v > 0, '> 0')
CONSISTENCY_WEIGHT = Flag('float', 'consistency_weight', 10., 'Weight of the consistency loss.',
                          lambda v: v >= 0, '>= 0')


def warmup_by_position(images_seen, warmup_pos, train_kimg):
    """min(1, images_seen / (warmup_pos * train_kimg * 1024)), as the reference's consistency
    methods (a fraction of --train_kimg, not of the epochs run)."""
    ramp_images = warmup_pos * (train_kimg << 10)
    return tf.clip_by_value(tf.cast(images_seen, tf.float32) / ramp_images, 0., 1.)


def kl_divergence_from_logits(logits_p, logits_q):
    """KL(p || q) per row, p and q the softmax of the logits."""
    log_p, log_q = tf.nn.log_softmax(logits_p), tf.nn.log_softmax(logits_q)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=1)


def entropy_from_logits(logits):
    """Entropy of softmax(logits) per row."""
    log_p = tf.nn.log_softmax(logits)
    return -tf.reduce_sum(tf.exp(log_p) * log_p, axis=1)


def _normalize(d):
    """d divided by its max-abs, then by its L2 norm, per example (the VAT code's two steps)."""
    axes = list(range(1, len(d.shape)))
    d /= 1e-12 + tf.reduce_max(tf.abs(d), axes, keepdims=True)
    return d / tf.sqrt(1e-6 + tf.reduce_sum(tf.square(d), axes, keepdims=True))


# VAT's probe step, as the reference (third_party/vat_utils.py). At 1e-6 the probe moves the
# logits by about their float32 rounding, so the direction found is partly rounding noise.
VAT_XI = 1e-6


def vat_perturbation(images, logits, classify, epsilon):
    """One power iteration for the direction that changes the prediction most, scaled to epsilon."""
    d = VAT_XI * _normalize(layers.random_normal(images.shape))
    logits_near = classify(images + d, training=True, update_stats=False)
    distance = tf.reduce_mean(kl_divergence_from_logits(logits, logits_near))
    accumulate = tf.AggregationMethod.EXPERIMENTAL_ACCUMULATE_N  # the VAT code's aggregation
    grad = tf.gradients(distance, [d], aggregation_method=accumulate)[0]
    return epsilon * _normalize(tf.stop_gradient(grad))


def cross_entropy(labels, logits):
    """Mean softmax cross-entropy of (soft) labels."""
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(labels=labels, logits=logits))
