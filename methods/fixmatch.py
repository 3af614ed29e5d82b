"""FixMatch with RandAugment (Sohn et al. 2020, arXiv:2001.07685), google-research/fixmatch's
`ablation/ab_fixmatch_ra.py` (FixMatch_RA). One training step:
  1. one training-mode pass over [labeled, weak views, strong views] (batch norm sees all of them);
  2. L_x: cross-entropy on the labeled images;
  3. pseudo-labels: the arg-max of the weak view's prediction (no gradient), kept where its top
     probability reaches --confidence;
  4. L_u: cross-entropy of the strong view against its pseudo-label, masked, averaged over all
     B * uratio unlabeled images;
  5. total L_x + wu * L_u + wd * sum of the kernels' L2 losses; SGD with Nesterov momentum 0.9 at
     lr * cos(7 pi k / (16 K)), k images seen of K = --train_kimg * 1024; then EMA (libml/graph.py).
"""

import math

import tensorflow.compat.v1 as tf

from libml.hparams import Flag

NAME = 'fixmatch'
NEEDS_UNLABELED = True
UNLABELED_VIEWS = ('weak', 'strong')
WEIGHT_DECAY = 'loss'
DEFAULTS = dict(lr=0.03, wd=0.0005)  # fixmatch.py's __main__
MOMENTUM = 0.9
FLAGS = [
    Flag('float', 'confidence', 0.95, 'FixMatch: pseudo-labels count where the weak view\'s top '
         'probability is at least this.', lambda v: 0 < v <= 1, 'in (0, 1]'),
    Flag('integer', 'uratio', 7, 'FixMatch: unlabeled images per labeled image in a step.',
         lambda v: v >= 1, '>= 1'),
    Flag('float', 'wu', 1., 'FixMatch: weight of the pseudo-label loss.', lambda v: v >= 0, '>= 0'),
]


def unlabeled_batch(hp):
    """B * uratio unlabeled images a step."""
    return hp['batch'] * hp['uratio']


def learning_rate(hp, images_seen):
    """lr * cos(7 pi / 16 * min(1, k / K)): the reference's cosine decay, K from --train_kimg."""
    progress = tf.clip_by_value(tf.cast(images_seen, tf.float32) / float(hp['train_kimg'] << 10),
                                0., 1.)
    return hp['lr'] * tf.cos(progress * (7 * math.pi / 16))


def optimizer(hp, images_seen):
    """SGD with Nesterov momentum on the decayed learning rate."""
    return tf.train.MomentumOptimizer(learning_rate(hp, images_seen), MOMENTUM, use_nesterov=True)


def kernel_l2():
    """sum(||w||^2 / 2) over the classifier's kernels (conv and dense; not biases or batch norm)."""
    return tf.add_n([tf.nn.l2_loss(v) for v in tf.trainable_variables('classify')
                     if 'kernel' in v.op.name])


def step_parts(labeled_batch, unlabeled_batch, classify):
    """(L_x, the weak views' probabilities without gradient, the strong views' logits) of one
    training-mode pass over [labeled, weak, strong]."""
    batch = int(labeled_batch['image'].shape[0])
    weak, strong = tf.unstack(unlabeled_batch['image'], axis=1)
    logits = classify(tf.concat([labeled_batch['image'], weak, strong], 0), training=True)
    logits_weak, logits_strong = tf.split(logits[batch:], 2)
    loss_xe = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labeled_batch['label'], logits=logits[:batch]))
    return loss_xe, tf.stop_gradient(tf.nn.softmax(logits_weak)), logits_strong


def confident_mask(probs_weak, confidence):
    """1 where the weak view's top probability reaches `confidence`, else 0."""
    return tf.cast(tf.reduce_max(probs_weak, axis=1) >= confidence, tf.float32)


def pseudo_label_loss(probs_weak, logits_strong, mask):
    """Mean over all images of mask * CE(argmax of the weak view, the strong view's logits)."""
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.argmax(probs_weak, axis=1), logits=logits_strong)
    return tf.reduce_mean(loss * mask)


def step_losses(hp, images_seen, loss_xe, probs_weak, logits_strong, mask):
    """The step's loss L_x + wu * L_u + wd * L2 for the pseudo-labels `mask` keeps, and the
    scalars to log (FlexMatch and FreeMatch change only the mask, and add their terms)."""
    loss_xeu = pseudo_label_loss(probs_weak, logits_strong, mask)
    loss_wd = kernel_l2()
    return dict(loss=loss_xe + hp['wu'] * loss_xeu + hp['wd'] * loss_wd, xe=loss_xe, xeu=loss_xeu,
                wd=loss_wd, mask=tf.reduce_mean(mask), lr=learning_rate(hp, images_seen))


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one FixMatch step and the scalars to log."""
    del nclass
    loss_xe, probs_weak, logits_strong = step_parts(labeled_batch, unlabeled_batch, classify)
    mask = confident_mask(probs_weak, hp['confidence'])
    return step_losses(hp, images_seen, loss_xe, probs_weak, logits_strong, mask)
