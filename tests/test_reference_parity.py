"""One RealMix step against a numpy transcription of the reference's `model()`
(uizard-technologies/realmix realmix.py, MixMatch's MixMode('xxy.yxy') and interleave):
fixed weights, batch, MixUp weights and permutation; guessed labels, mixed targets and both
losses to 1e-5, for both TSA rules and with and without OOD masking."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from libml import layers
from methods import realmix

tf.disable_v2_behavior()

NCLASS, BATCH, NU, HWC = 5, 7, 2, (4, 4, 2)


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_classify(x, weights):
    """Linear classifier on batch-centred inputs: batch-dependent like batch norm, so the
    interleaving of labeled and unlabeled rows changes the logits."""
    centred = x - x.mean(0, keepdims=True)
    return centred.reshape(len(x), -1).dot(weights)


def tf_classify(weights):
    def classify(x, training=True, update_stats=True, getter=None):
        centred = x - tf.reduce_mean(x, 0, keepdims=True)
        return tf.matmul(tf.reshape(centred, [int(x.shape[0]), -1]), tf.constant(weights))
    return classify


def np_interleave(xy, batch):
    """The reference's interleave, transcribed."""
    nu = len(xy) - 1
    groups = [batch // (nu + 1)] * (nu + 1)
    for x in range(batch - sum(groups)):
        groups[-x - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    xy = [[v[offsets[p]:offsets[p + 1]] for p in range(nu + 1)] for v in xy]
    for i in range(1, nu + 1):
        xy[0][i], xy[i][i] = xy[i][i], xy[0][i]
    return [np.concatenate(v, axis=0) for v in xy]


def reference_model(x, y_views, labels, weights, lam, index, eta, tsa, percent_mask, T=0.5):
    """The reference's model() for one batch, in numpy."""
    p_model_y = np.mean([softmax(np_classify(v, weights)) for v in y_views], axis=0)
    p_target = p_model_y ** (1. / T)
    p_target /= p_target.sum(1, keepdims=True)
    lx = np.eye(NCLASS, dtype=np.float32)[labels]
    xs, ls = np.concatenate([x] + y_views), np.concatenate([lx] + [p_target] * NU)
    mix = lam.reshape([-1, 1, 1, 1])
    xmix = xs * mix + xs[index] * (1 - mix)
    lmix = ls * lam[:, None] + ls[index] * (1 - lam[:, None])
    batches = np_interleave(np.split(xmix, NU + 1), BATCH)
    logits = np_interleave([np_classify(b, weights) for b in batches], BATCH)
    logits_x, logits_y = logits[0], np.concatenate(logits[1:])
    labels_x, labels_y = lmix[:BATCH], lmix[BATCH:]
    loss_xe = -(labels_x * np.log(softmax(logits_x))).sum(1)
    if tsa == 'reference':
        correct = softmax(logits_x) * (labels_x > 0)
        votes = np.where(correct < logits_x * eta, NCLASS + 1., -1.)
        mask = (votes.mean(1) > 0).astype(np.float64)
        loss_xe = (loss_xe * mask).sum() / max(mask.sum(), 1)
    elif tsa == 'definition':  # UDA's rule, for our --tsa_rule=definition
        mask = 1. - np.all(softmax(logits_x) >= labels_x * eta, axis=1)
        loss_xe = (loss_xe * mask).sum() / max(mask.sum(), 1)
    else:
        loss_xe = loss_xe.mean()
    loss_l2u = (labels_y - softmax(logits_y)) ** 2
    if percent_mask > 0:
        largest = softmax(logits_y).max(1)
        cut = np.sort(largest)[int(len(largest) * percent_mask)]
        keep = (largest > cut).astype(np.float64)
        loss_l2u = (loss_l2u * keep[:, None]).sum() / max(keep.sum() * NCLASS, 1)
    else:
        loss_l2u = loss_l2u.mean()
    return dict(label_guess=p_target, mixed_targets=lmix, loss_x=loss_xe, loss_u=loss_l2u)


@pytest.mark.parametrize('tsa_rule,percent_mask', [
    ('none', -1), ('reference', -1), ('definition', -1), ('reference', 0.3), ('definition', 0.5)])
def test_one_step_equals_the_reference_model(tsa_rule, percent_mask):
    rng = np.random.RandomState(7)
    x = rng.uniform(-1, 1, (BATCH,) + HWC).astype(np.float32)
    y_views = [rng.uniform(-1, 1, (BATCH,) + HWC).astype(np.float32) for _ in range(NU)]
    labels = rng.randint(NCLASS, size=BATCH)
    weights = (rng.randn(int(np.prod(HWC)), NCLASS) * 1.5).astype(np.float32)
    count = BATCH * (NU + 1)
    lam = rng.beta(0.75, 0.75, count).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)
    index = rng.permutation(count)
    progress = 0.5
    eta = progress * (1 - 1. / NCLASS) + 1. / NCLASS  # linear schedule
    hp = dict(T=0.5, beta=0.75, w_match=75., warmup_kimg=1., total_nimg=2048,
              tsa='none' if tsa_rule == 'none' else 'linear_schedule',
              tsa_rule='reference' if tsa_rule == 'none' else tsa_rule, percent_mask=percent_mask)

    def fixed_mixup(images, targets, beta):
        return layers.mix_with(images, targets, tf.constant(lam), tf.constant(index))

    with tf.Graph().as_default():
        terms = realmix.realmix_terms(
            dict(image=tf.constant(x), label=tf.constant(labels)), [tf.constant(v) for v in y_views],
            tf_classify(weights), hp, tf.constant(1024, tf.int64), NCLASS, mixup=fixed_mixup)
        with tf.Session() as session:
            got = session.run({k: terms[k] for k in ('label_guess', 'mixed_targets', 'loss_x', 'loss_u',
                                                     'tsa_keep', 'ood_keep')})
    expected = reference_model(x, y_views, labels, weights, lam, index, eta,
                               'none' if tsa_rule == 'none' else tsa_rule, percent_mask)
    for key in ('label_guess', 'mixed_targets', 'loss_x', 'loss_u'):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    if tsa_rule != 'none':
        assert 0 < got['tsa_keep'].sum() < BATCH or tsa_rule == 'reference'  # a real test case
    if percent_mask > 0:
        assert got['ood_keep'].sum() < NU * BATCH
