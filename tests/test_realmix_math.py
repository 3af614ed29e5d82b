"""The maths of one RealMix step against hand-computed numpy values."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from libml import layers
from libml.utils import UserError
from methods import realmix

tf.disable_v2_behavior()


def run(tensors, feed=None, seed=None):
    with tf.Session() as session:
        session.run(tf.global_variables_initializer())
        return session.run(tensors, feed)


@pytest.fixture(autouse=True)
def fresh_graph():
    with tf.Graph().as_default() as graph:
        yield graph


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_sharpen_matches_hand_computed_values():
    p = np.array([[0.6, 0.4], [0.25, 0.75]], np.float32)
    got = run(layers.sharpen(tf.constant(p), 0.5))
    expected = np.array([[0.36 / 0.52, 0.16 / 0.52], [0.0625 / 0.625, 0.5625 / 0.625]])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_guess_labels_averages_the_views_then_sharpens():
    logits = [np.array([[2., 0., -1.]], np.float32), np.array([[0., 1., 0.]], np.float32)]
    views = [tf.constant(v) for v in logits]
    guess = run(realmix.guess_labels(views, lambda x, **kw: x, temperature=0.5))
    mean = (softmax(logits[0]) + softmax(logits[1])) / 2
    np.testing.assert_allclose(guess, mean ** 2 / (mean ** 2).sum(1, keepdims=True), rtol=1e-5)


def test_mixup_weights_are_at_least_half_and_mix_images_and_labels_alike():
    count = 64
    images = (np.arange(count).reshape([count, 1, 1, 1]) * np.ones([1, 2, 2, 1])).astype(np.float32)
    targets = np.eye(count, dtype=np.float32)
    mixed_images, mixed_targets, lam = run(layers.mixup(tf.constant(images), tf.constant(targets), 0.75))
    assert (lam >= 0.5).all() and (lam <= 1).all()
    assert lam.std() > 0  # drawn per example
    for i in range(count):
        own = mixed_targets[i, i]
        partner = [j for j in np.nonzero(mixed_targets[i])[0] if j != i]
        j = partner[0] if partner else i
        assert own == pytest.approx(lam[i] if partner else 1., abs=1e-5)
        assert mixed_targets[i].sum() == pytest.approx(1, abs=1e-5)
        assert mixed_images[i, 0, 0, 0] == pytest.approx(lam[i] * i + (1 - lam[i]) * j, abs=1e-4)


def test_interleave_round_trip_and_every_pass_mixes_labeled_and_unlabeled():
    batch = 10
    groups = [(g + np.arange(batch)[:, None] / 100.).astype(np.float32) for g in range(3)]
    swapped = run(layers.interleave([tf.constant(g) for g in groups], batch))
    sources = [set(np.floor(group[:, 0]).astype(int)) for group in swapped]
    assert sources == [{0, 1, 2}, {0, 1}, {0, 2}]  # every pass holds labeled and unlabeled rows
    restored = run(layers.interleave([tf.constant(g) for g in swapped], batch))
    for original, back in zip(groups, restored):
        np.testing.assert_array_equal(original, back)
    assert layers.interleave_offsets(64, 3) == [0, 21, 42, 64]


@pytest.mark.parametrize('schedule,alpha', [
    ('linear_schedule', 0.3),
    ('exp_schedule', np.exp((0.3 - 1) * 5)),
    ('log_schedule', 1 - np.exp(-0.3 * 5)),
])
def test_tsa_threshold_schedules(schedule, alpha):
    eta = run(realmix.tsa_threshold(schedule, tf.constant(0.3), 10))
    assert eta == pytest.approx(alpha * 0.9 + 0.1, rel=1e-5)


def test_tsa_drops_examples_whose_target_classes_all_reach_weight_times_eta():
    logits = np.log(np.array([
        [0.70, 0.20, 0.10],   # one-hot target class 0: 0.70 >= 1.0*0.6 -> dropped
        [0.50, 0.30, 0.20],   # one-hot target class 0: 0.50 < 0.6 -> kept
        [0.45, 0.45, 0.10],   # mixed target (0.6, 0.4): 0.45 >= 0.36 and 0.45 >= 0.24 -> dropped
        [0.30, 0.60, 0.10],   # mixed target (0.6, 0.4): 0.30 < 0.36 -> kept
    ], np.float32))
    targets = np.array([[1, 0, 0], [1, 0, 0], [.6, .4, 0], [.6, .4, 0]], np.float32)
    keep = run(realmix.tsa_keep_mask(tf.constant(logits), tf.constant(targets), 0.6, 'definition'))
    np.testing.assert_array_equal(keep, [0, 1, 0, 1])
    # r = 0.4 on the linear schedule with C = 3 gives eta = 0.4 * 2/3 + 1/3 = 0.6
    loss, _ = run(realmix.supervised_loss(tf.constant(logits), tf.constant(targets), 'linear_schedule',
                                          tf.constant(0.4), 3, 'definition'))
    xe = -(targets * np.log(softmax(logits))).sum(1)
    assert loss == pytest.approx((xe[1] + xe[3]) / 2, rel=1e-5)


def reference_tsa_keep(logits, targets, eta):
    """numpy transcription of the reference's anneal_sup_loss mask (C+1 / -1 votes, mean > 0)."""
    nclass = logits.shape[1]
    correct_label_probs = softmax(logits) * (targets > 0)
    votes = np.where(correct_label_probs < logits * eta, nclass + 1., -1.)
    return (votes.mean(1) > 0).astype(np.float32)


def test_tsa_reference_rule_compares_probabilities_with_eta_times_the_logits():
    rng = np.random.RandomState(3)
    logits = (rng.randn(32, 10) * 2 - 4).astype(np.float32)  # mostly negative: both outcomes occur
    targets = np.zeros([32, 10], np.float32)
    targets[np.arange(32), rng.randint(10, size=32)] = 0.7
    targets[np.arange(32), rng.randint(10, size=32)] += 0.3
    for eta in (0.1, 0.5, 1.0):
        keep = run(realmix.tsa_keep_mask(tf.constant(logits), tf.constant(targets), eta, 'reference'))
        expected = reference_tsa_keep(logits, targets, eta)
        np.testing.assert_array_equal(keep, expected)
        assert 0 < expected.sum() < 32  # the case mixes kept and dropped rows
    # Hand-checked rows (eta = 0.5): a positive logit on any class keeps the row, even a fitted one.
    rows = np.array([[4., -1., -1.], [-1., -2., -3.]], np.float32)
    one_hot = np.array([[1., 0., 0.], [1., 0., 0.]], np.float32)
    keep = run(realmix.tsa_keep_mask(tf.constant(rows), tf.constant(one_hot), 0.5, 'reference'))
    # row 0: class 0 has p=0.99 < 0.5*4=2 -> kept; row 1: every eta*z_c < 0 <= p_c*[t_c>0] -> dropped
    np.testing.assert_array_equal(keep, [1, 0])


def test_tsa_reference_rule_depends_on_a_constant_shift_of_the_logits_the_definition_does_not():
    logits = np.array([[2., 0.5, -1.], [0.1, 0.2, 0.3]], np.float32)
    targets = np.array([[1., 0., 0.], [0.6, 0.4, 0.]], np.float32)
    eta = 0.6
    for shift in (-5., 0., 5.):
        shifted = tf.constant(logits + shift)
        reference = run(realmix.tsa_keep_mask(shifted, tf.constant(targets), eta, 'reference'))
        definition = run(realmix.tsa_keep_mask(shifted, tf.constant(targets), eta, 'definition'))
        np.testing.assert_array_equal(reference, reference_tsa_keep(logits + shift, targets, eta))
        # Softmax ignores the shift, so the definition's mask does not move: row 0 is fitted.
        np.testing.assert_array_equal(definition, [0, 1])
        # All logits negative: nothing is below eta*z; all large positive: everything is.
        assert reference.tolist() == {-5.: [0, 0], 0.: [1, 1], 5.: [1, 1]}[shift]


def test_tsa_rejects_an_unknown_rule():
    with pytest.raises(UserError, match='tsa_rule'):
        realmix.tsa_keep_mask(tf.zeros([1, 2]), tf.zeros([1, 2]), 0.5, 'strict')


@pytest.mark.parametrize('rule', ['reference', 'definition'])
def test_tsa_keeps_nothing_then_loss_is_zero_not_nan(rule):
    logits = np.log(np.array([[0.9, 0.1]], np.float32))
    loss, keep = run(realmix.supervised_loss(tf.constant(logits), tf.constant([[1., 0.]]),
                                             'linear_schedule', tf.constant(0.), 2, rule))
    assert keep.sum() == 0 and loss == 0


def test_ood_percent_mask_keeps_examples_above_the_cut_and_normalises_by_kept_times_classes():
    rng = np.random.RandomState(0)
    logits = rng.randn(8, 4).astype(np.float32) * 2
    targets = softmax(rng.randn(8, 4)).astype(np.float32)
    loss, keep = run(realmix.unlabeled_loss(tf.constant(logits), tf.constant(targets), 0.25))
    top = softmax(logits).max(1)
    cut = np.sort(top)[int(np.floor(8 * 0.25))]
    np.testing.assert_array_equal(keep, (top > cut).astype(np.float32))
    assert keep.sum() == 5
    squared = ((targets - softmax(logits)) ** 2)[top > cut]
    assert loss == pytest.approx(squared.sum() / (5 * 4), rel=1e-5)


def test_ood_mask_off_is_plain_mean_squared_error():
    logits = np.array([[1., 2.], [0., -1.]], np.float32)
    targets = np.array([[0.5, 0.5], [1., 0.]], np.float32)
    loss, keep = run(realmix.unlabeled_loss(tf.constant(logits), tf.constant(targets), -1))
    assert keep.tolist() == [1, 1]
    assert loss == pytest.approx(((targets - softmax(logits)) ** 2).mean(), rel=1e-5)


def test_w_match_ramp():
    values = run([realmix.warmup_ramp(tf.constant(n), 2.) for n in (0, 1024, 2048, 10 ** 6)])
    np.testing.assert_allclose(values, [0, 0.5, 1, 1])
    assert run(realmix.warmup_ramp(tf.constant(5), 0)) == 1
