"""FlexMatch (Zhang et al. 2021, arXiv:2110.08263) as USB codes it (microsoft/Semi-supervised-
learning, `semilearn/algorithms/flexmatch/`): FixMatch's step (methods/fixmatch.py) with class-wise
flexible thresholds. State: each unlabeled image's learning status (the class it was last
pseudo-labeled with at confidence >= tau, -1 before) and the classes' learning effects beta.
One step, in USB's order (FlexMatchThresholdingHook.masking, then .update):
  1. mask: the weak view's top probability >= tau * M(beta(argmax)), M(x) = x / (2 - x), with
     the previous step's beta (0 at the start: every pseudo-label counts);
  2. the status of the batch's images whose top probability reaches tau becomes their arg-max;
  3. beta(c) = sigma(c) / max(max_c sigma, unused images) (--thresh_warmup; else / max_c sigma),
     sigma(c) the images of status c; kept as it was while one status holds every image.
"""

import numpy as np
import tensorflow.compat.v1 as tf

import methods
from libml.hparams import Flag
from methods import fixmatch
from methods.fixmatch import (  # noqa: F401  FixMatch's optimizer, defaults, views and batch
    DEFAULTS, NEEDS_UNLABELED, UNLABELED_VIEWS, WEIGHT_DECAY, optimizer, unlabeled_batch)

NAME = 'flexmatch'
SHARES_STATE = True
FLAGS = fixmatch.FLAGS + [
    Flag('bool', 'thresh_warmup', True, 'FlexMatch: threshold warm-up, learning effects divided '
         'by the unused images too while they are the most (USB\'s default).')]


def flexible_mask(probs_weak, beta, confidence):
    """1 where the top probability reaches confidence * M(beta(arg-max)), M(x) = x / (2 - x)."""
    beta_of_label = tf.gather(beta, tf.argmax(probs_weak, axis=1))
    threshold = confidence * beta_of_label / (2. - beta_of_label)
    return tf.cast(tf.reduce_max(probs_weak, axis=1) >= threshold, tf.float32)


def status_change(status, index, probs_weak, confidence):
    """[N] float: new status - old status at each image this batch selects (top probability >=
    confidence), 0 elsewhere; of an image twice in the batch, the last selection counts."""
    index = tf.cast(index, tf.int32)
    selected = tf.reduce_max(probs_weak, axis=1) >= confidence
    size = int(index.shape[0])
    later = tf.constant(np.triu(np.ones([size, size], bool), 1))  # [b, b']: b' comes after b
    overwritten = tf.reduce_any(tf.equal(index[:, None], index[None, :]) & later
                                & selected[None, :], axis=1)
    keep = tf.cast(selected & tf.logical_not(overwritten), tf.float32)
    change = tf.cast(tf.argmax(probs_weak, axis=1, output_type=tf.int32)
                     - tf.gather(status, index), tf.float32) * keep
    return tf.math.unsorted_segment_sum(change, index, int(status.shape[0]))


def learning_effect(status, beta, nclass, warmup):
    """beta from the status (USB FlexMatchThresholdingHook.update): sigma(c) / max(max_c sigma,
    unused) with warm-up, else sigma(c) / max_c sigma; `beta` unchanged while one status (-1 or
    a class) holds every image."""
    counts = tf.math.unsorted_segment_sum(tf.ones(status.shape, tf.float32), status + 1, nclass + 1)
    unused, sigma = counts[0], counts[1:]
    largest = tf.maximum(tf.reduce_max(sigma), unused)
    denominator = largest if warmup else tf.reduce_max(sigma)
    fresh = sigma / tf.maximum(denominator, 1.)
    return tf.where(largest < float(int(status.shape[0])), fresh, beta)


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass, sum_over_replicas):
    """The loss of one FlexMatch step, the scalars to log and the state update."""
    status = methods.state_variable('selected_label', [hp['unlabeled_size']], tf.int32,
                                    tf.constant_initializer(-1))
    beta = methods.state_variable('classwise_acc', [nclass], tf.float32, tf.zeros_initializer())
    loss_xe, probs_weak, logits_strong = fixmatch.step_parts(labeled_batch, unlabeled_batch,
                                                             classify)
    old_beta = beta.read_value()
    mask = flexible_mask(probs_weak, old_beta, hp['confidence'])
    # Replicas select disjoint images (their shards partition the set): the sum is every change.
    change, = sum_over_replicas([status_change(status, unlabeled_batch['index'], probs_weak,
                                               hp['confidence'])])
    logged = dict(unused=tf.reduce_mean(tf.cast(tf.equal(status, -1), tf.float32)),
                  beta=tf.reduce_mean(old_beta))
    new_status = status + tf.cast(tf.round(change), tf.int32)
    # Step 1 and the logged values read the previous state (TF 1 variables' reads alias their
    # buffer, so they must run before the assignments); 2 and 3 follow.
    with tf.control_dependencies([mask] + list(logged.values())):
        update = tf.group(tf.assign(status, new_status), tf.assign(beta, learning_effect(
            new_status, old_beta, nclass, hp['thresh_warmup'])))
    with tf.control_dependencies([change]):  # every rank runs its collectives in one order
        mask = tf.identity(mask)
    scalars = fixmatch.step_losses(hp, images_seen, loss_xe, probs_weak, logits_strong, mask)
    return dict(scalars, state_update=update, **logged)
