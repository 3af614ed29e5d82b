"""RealMix: MixMatch with training signal annealing and out-of-distribution masking.

Nair, Fuentes Alonso, Beltramelli (2019), arXiv:1912.08766; MixMatch: Berthelot et al. (2019).
One training step (docs/design.md section 4):
  1. guess labels for the K=2 views of each unlabeled image, sharpen with temperature T;
  2. MixUp the stack [labeled, view 1, view 2] with a random permutation of itself;
  3. interleave the three groups so every batch-norm pass sees labeled and unlabeled images;
  4. L_x: cross-entropy on the mixed labeled part, with TSA; L_u: squared error on the mixed
     unlabeled part, with OOD percent masking; total L_x + w_match * ramp * L_u;
  5. Adam step, then EMA of the weights and decoupled weight decay (libml/graph.py).
MixMatch is this method with --tsa=none --percent_mask=-1 (the defaults).
"""

import numpy as np
import tensorflow.compat.v1 as tf

from libml import layers
from libml.hparams import Flag
from libml.utils import UserError

NAME = 'realmix'
NEEDS_UNLABELED = True
TSA_SCHEDULES = ('none', 'linear_schedule', 'exp_schedule', 'log_schedule')
TSA_RULES = ('reference', 'definition')
BETA = Flag('float', 'beta', 0.75, 'MixUp Beta(beta, beta) parameter.', lambda v: v > 0, '> 0')
W_MATCH = Flag('float', 'w_match', 75., 'Weight of the unlabeled loss.', lambda v: v >= 0, '>= 0')
WARMUP_KIMG = Flag('float', 'warmup_kimg', 1024., 'Linear warm-up of w_match, in kimg (1024 '
                   'labeled images).', lambda v: v >= 0, '>= 0')
TEMPERATURE = Flag('float', 'T', 0.5, 'Sharpening temperature.', lambda v: v > 0, '> 0')
FLAGS = [
    BETA, W_MATCH, WARMUP_KIMG, TEMPERATURE,
    Flag('string', 'tsa', 'none', 'Training signal annealing: %s.' % ', '.join(TSA_SCHEDULES),
         lambda v: v in TSA_SCHEDULES, 'one of %s' % ', '.join(TSA_SCHEDULES)),
    Flag('enum', 'tsa_rule', 'reference', 'Which rows TSA keeps: reference (the reference code: '
         'p_c[t_c>0] < eta*logit_c for some c) or definition (UDA: p_c < t_c*eta for some target c).',
         enum=TSA_RULES),
    Flag('float', 'percent_mask', -1., 'OOD masking: drop this fraction of the least confident '
         'mixed unlabeled examples from L_u; <= 0 turns it off.', lambda v: -1 <= v < 1,
         'in [-1, 1): e.g. 0.3 masks the 30% least confident unlabeled examples, -1 turns masking off'),
]


def guess_labels(unlabeled_views, classify, temperature):
    """Average the model's predictions over the K views, sharpen; no gradient flows through q."""
    probs = [tf.nn.softmax(classify(view, training=True, update_stats=False))
             for view in unlabeled_views]
    return tf.stop_gradient(layers.sharpen(tf.add_n(probs) / len(probs), temperature))


def tsa_threshold(schedule, progress, nclass):
    """UDA's annealed threshold eta = alpha * (1 - 1/C) + 1/C for progress r in [0, 1]."""
    if schedule == 'linear_schedule':
        alpha = progress
    elif schedule == 'exp_schedule':
        alpha = tf.exp((progress - 1) * 5)
    elif schedule == 'log_schedule':
        alpha = 1 - tf.exp(-progress * 5)
    else:
        raise UserError('unknown --tsa=%s; choose one of: %s' % (schedule, ', '.join(TSA_SCHEDULES)))
    return alpha * (1 - 1. / nclass) + 1. / nclass


def tsa_keep_mask(logits, targets, threshold, rule='reference'):
    """1 for the rows of the mixed labeled batch that TSA still trains, else 0.

    reference:  kept when some class c has p_c * [t_c > 0] < eta * z_c (z: the logits), as the
                reference code does (uizard-technologies/realmix `anneal_sup_loss`);
    definition: kept while some target class c has p_c < t_c * eta, as UDA defines TSA
                (classes with zero target weight never hold a row back).
    """
    probs = tf.nn.softmax(logits)
    if rule == 'reference':
        target_probs = probs * tf.cast(targets > 0, probs.dtype)
        below = tf.reduce_any(target_probs < logits * threshold, axis=1)
        return tf.stop_gradient(tf.cast(below, tf.float32))
    if rule != 'definition':
        raise UserError('unknown --tsa_rule=%s; choose one of: %s' % (rule, ', '.join(TSA_RULES)))
    reached = tf.reduce_all(probs >= targets * threshold, axis=1)
    return tf.stop_gradient(1. - tf.cast(reached, tf.float32))


def supervised_loss(logits, targets, tsa, progress, nclass, rule='reference'):
    """Cross-entropy on (mixed) labeled targets, averaged over the examples TSA keeps."""
    loss = tf.nn.softmax_cross_entropy_with_logits_v2(labels=targets, logits=logits)
    if tsa == 'none':
        return tf.reduce_mean(loss), tf.ones_like(loss)
    keep = tsa_keep_mask(logits, targets, tsa_threshold(tsa, progress, nclass), rule)
    return tf.reduce_sum(loss * keep) / tf.maximum(tf.reduce_sum(keep), 1.), keep


def ood_keep_mask(logits, percent_mask):
    """Keep examples whose top probability is above the floor(N * p)-th smallest top probability."""
    top_prob = tf.stop_gradient(tf.reduce_max(tf.nn.softmax(logits), axis=1))
    count = int(logits.shape[0])
    cut = tf.sort(top_prob)[int(np.floor(count * percent_mask))]
    return tf.cast(top_prob > cut, tf.float32)


def unlabeled_loss(logits, targets, percent_mask):
    """Squared error between mixed guessed targets and predictions; OOD-masked when p > 0."""
    squared_error = tf.square(targets - tf.nn.softmax(logits))
    if percent_mask <= 0:
        return tf.reduce_mean(squared_error), tf.ones([int(logits.shape[0])])
    keep = ood_keep_mask(logits, percent_mask)
    nclass = int(logits.shape[1])
    kept_error = tf.reduce_sum(squared_error * keep[:, None])
    return kept_error / tf.maximum(tf.reduce_sum(keep) * nclass, 1.), keep


def warmup_ramp(images_seen, warmup_kimg):
    """min(1, images_seen / (warmup_kimg * 1024)) for the unlabeled-loss weight."""
    if warmup_kimg <= 0:
        return tf.constant(1.)
    return tf.clip_by_value(tf.cast(images_seen, tf.float32) / (warmup_kimg * 1024.), 0., 1.)


def realmix_terms(labeled_batch, unlabeled_views, classify, hp, images_seen, nclass,
                  mixup=layers.mixup):
    """Steps 1-4 of the algorithm box: every intermediate of one RealMix step, by name."""
    batch = int(labeled_batch['image'].shape[0])
    label_guess = guess_labels(unlabeled_views, classify, hp['T'])
    stack = tf.concat([labeled_batch['image']] + unlabeled_views, 0)
    targets = tf.concat([tf.one_hot(labeled_batch['label'], nclass)]
                        + [label_guess] * len(unlabeled_views), 0)
    mixed_images, mixed_targets, _ = mixup(stack, targets, hp['beta'])
    groups = layers.interleave(tf.split(mixed_images, 1 + len(unlabeled_views)), batch)
    logits = [classify(groups[0], training=True, update_stats=True)]
    logits += [classify(group, training=True, update_stats=False) for group in groups[1:]]
    logits = layers.interleave(logits, batch)
    logits_x, logits_u = logits[0], tf.concat(logits[1:], 0)
    progress = tf.cast(images_seen, tf.float32) / float(hp['total_nimg'])
    loss_x, tsa_keep = supervised_loss(logits_x, mixed_targets[:batch], hp['tsa'], progress, nclass,
                                       hp.get('tsa_rule', 'reference'))
    loss_u, ood_keep = unlabeled_loss(logits_u, mixed_targets[batch:], hp['percent_mask'])
    w_match = hp['w_match'] * warmup_ramp(images_seen, hp['warmup_kimg'])
    return dict(label_guess=label_guess, mixed_targets=mixed_targets, logits_x=logits_x,
                logits_u=logits_u, loss_x=loss_x, loss_u=loss_u, tsa_keep=tsa_keep,
                ood_keep=ood_keep, w_match=w_match)


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one RealMix step and the scalars to log."""
    views = tf.unstack(unlabeled_batch['image'], axis=1)
    t = realmix_terms(labeled_batch, views, classify, hp, images_seen, nclass)
    # The reference logs the spread of the top predicted probability on the mixed unlabeled rows.
    top_prob_u = tf.reduce_max(tf.nn.softmax(t['logits_u']), axis=1)
    return dict(loss=t['loss_x'] + t['w_match'] * t['loss_u'], xe=t['loss_x'], l2u=t['loss_u'],
                w_match=t['w_match'], mask_ratio=tf.reduce_mean(t['ood_keep']),
                tsa_kept=tf.reduce_mean(t['tsa_keep']), min_unsup_prob=tf.reduce_min(top_prob_u),
                mean_unsup_prob=tf.reduce_mean(top_prob_u), max_unsup_prob=tf.reduce_max(top_prob_u))
