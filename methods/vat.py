"""Virtual adversarial training with entropy minimisation (Miyato et al. 2018), the reference's
`vat.py`: the prediction on an unlabeled image must not change under the small perturbation that
changes it most (one power iteration); plus the entropy of the predictions, minimised."""

import tensorflow.compat.v1 as tf

from libml import consistency
from libml.hparams import Flag
from methods import pi_model

NAME = 'vat'
NEEDS_UNLABELED = True
FLAGS = [
    Flag('float', 'vat', 0.3, 'Weight of the VAT loss.', lambda v: v >= 0, '>= 0'),
    Flag('float', 'vat_eps', 6., 'Size (L2) of the adversarial perturbation.', lambda v: v > 0,
         '> 0'),
    Flag('float', 'entmin_weight', 0.06, 'Weight of the entropy minimisation.', lambda v: v >= 0,
         '>= 0'),
    consistency.WARMUP_POS,
]


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one VAT step and the scalars to log (one view of the unlabeled batch is used)."""
    images = tf.unstack(unlabeled_batch['image'], axis=1)[0]
    loss_xe = pi_model.labeled_loss(labeled_batch, classify, nclass)
    logits = classify(images, training=True, update_stats=False)
    delta = consistency.vat_perturbation(images, logits, classify, hp['vat_eps'])
    student = classify(images + delta, training=True, update_stats=False)
    teacher = tf.stop_gradient(logits)
    loss_vat = tf.reduce_mean(consistency.kl_divergence_from_logits(student, teacher))
    loss_entmin = tf.reduce_mean(consistency.entropy_from_logits(logits))
    warmup = consistency.warmup_by_position(images_seen, hp['warmup_pos'], hp['train_kimg'])
    loss = loss_xe + loss_vat * warmup * hp['vat'] + hp['entmin_weight'] * loss_entmin
    return dict(loss=loss, xe=loss_xe, vat=loss_vat, entmin=loss_entmin)
