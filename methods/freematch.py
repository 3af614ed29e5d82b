"""FreeMatch (Wang et al. 2022, arXiv:2205.07246) as USB codes it (microsoft/Semi-supervised-
learning, `semilearn/algorithms/freematch/`): FixMatch's step (methods/fixmatch.py) with
self-adaptive thresholds and a fairness term. State, each an EMA (momentum --ema_p) from 1/C:
tau (the mean top probability), p (the mean probabilities), h (the arg-max histogram).
One step, in USB's order (FreeMatchThresholingHook.masking, then FreeMatch.train_step):
  1. tau, p, h move towards this step's weak views over every replica (USB gathers them);
  2. mask: the top probability >= tau * p(argmax) / max p, with the updated state;
  3. L_f = sum_c SumNorm(p / h)_c log(SumNorm(pbar_s / hbar_s)_c + 1e-12) (`entropy_loss`), pbar_s
     and hbar_s the mean probabilities and arg-max histogram of the masked strong views, 1/0 read
     as 0, and 0 when nothing is masked; total L_x + wu * L_u + wf * L_f + wd * L2.
"""

import tensorflow.compat.v1 as tf

import methods
from libml.hparams import Flag
from methods import fixmatch
from methods.fixmatch import (  # noqa: F401  FixMatch's optimizer, defaults, views and batch
    DEFAULTS, NEEDS_UNLABELED, UNLABELED_VIEWS, WEIGHT_DECAY, optimizer, unlabeled_batch)

NAME = 'freematch'
SHARES_STATE = True
FLAGS = [spec for spec in fixmatch.FLAGS if spec.name != 'confidence'] + [
    Flag('float', 'ema_p', 0.999, 'FreeMatch: momentum of its threshold\'s moving averages '
         '(USB --ema_p).', lambda v: 0 <= v < 1, 'in [0, 1)'),
    Flag('float', 'wf', 0.001, 'FreeMatch: weight of the fairness term (USB --ent_loss_ratio: '
         '0.001 in its classic_cv configs, 0.01 its code default).', lambda v: v >= 0, '>= 0')]


def batch_statistics(probs_weak, nclass):
    """Sums over the batch of [the top probability], the probabilities, the arg-max one-hots, and
    [the image count]: summed over the replicas, they give the global batch's means."""
    top = tf.reduce_max(probs_weak, axis=1)
    one_hot = tf.one_hot(tf.argmax(probs_weak, axis=1), nclass)
    count = tf.constant([float(int(probs_weak.shape[0]))])
    return [tf.reduce_sum(top, keepdims=True), tf.reduce_sum(probs_weak, 0),
            tf.reduce_sum(one_hot, 0), count]


def updated_state(state, sums, momentum):
    """(tau, p, h) moved towards the global batch's means (USB FreeMatchThresholingHook.update)."""
    top, probs, hist, count = sums
    means = (top[0] / count[0], probs / count[0], hist / tf.reduce_sum(hist))
    return [momentum * old + (1 - momentum) * mean for old, mean in zip(state, means)]


def adaptive_mask(probs_weak, tau, p_model):
    """1 where the top probability reaches tau * p(arg-max) / max p."""
    local = tf.gather(p_model / tf.reduce_max(p_model), tf.argmax(probs_weak, axis=1))
    return tf.cast(tf.reduce_max(probs_weak, axis=1) >= tau * local, tf.float32)


def _sum_norm(x):
    return x / tf.maximum(tf.reduce_sum(x), 1e-30)  # 0 / 0 only when nothing is masked


def fairness(logits_strong, mask, p_model, label_hist):
    """USB freematch.py `entropy_loss` on the masked strong views, with static shapes."""
    probs = tf.nn.softmax(logits_strong)
    one_hot = tf.one_hot(tf.argmax(probs, axis=1), int(probs.shape[1]))
    masked = tf.maximum(tf.reduce_sum(mask), 1.)
    hist_s = tf.reduce_sum(one_hot * mask[:, None], 0) / masked
    mean_prob_s = tf.reduce_sum(probs * mask[:, None], 0) / masked
    model = _sum_norm(p_model * tf.math.divide_no_nan(1., label_hist))
    batch = _sum_norm(mean_prob_s * tf.stop_gradient(tf.math.divide_no_nan(1., hist_s)))
    loss = tf.reduce_sum(model * tf.log(batch + 1e-12))
    return tf.where(tf.reduce_sum(mask) > 0, loss, 0.)


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass, sum_over_replicas):
    """The loss of one FreeMatch step, the scalars to log and the state update."""
    uniform = tf.constant_initializer(1. / nclass)
    state = [methods.state_variable('time_p', [], tf.float32, uniform),
             methods.state_variable('p_model', [nclass], tf.float32, uniform),
             methods.state_variable('label_hist', [nclass], tf.float32, uniform)]
    loss_xe, probs_weak, logits_strong = fixmatch.step_parts(labeled_batch, unlabeled_batch,
                                                             classify)
    tau, p_model, label_hist = updated_state(
        state, sum_over_replicas(batch_statistics(probs_weak, nclass)), hp['ema_p'])
    mask = adaptive_mask(probs_weak, tau, p_model)
    loss_f = fairness(logits_strong, mask, p_model, label_hist)
    scalars = fixmatch.step_losses(hp, images_seen, loss_xe, probs_weak, logits_strong, mask)
    update = tf.group(*[tf.assign(v, value) for v, value in zip(state, (tau, p_model, label_hist))])
    return dict(scalars, loss=scalars['loss'] + hp['wf'] * loss_f, fairness=loss_f, tau=tau,
                state_update=update)
