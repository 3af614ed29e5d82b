"""methods/: the registry, the shape every method module has, per-method flag defaults, the
renamed --method=mixup, and fs_mixup's loss."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import methods
from libml import hparams, inference
from libml.utils import UserError

tf.disable_v2_behavior()


def test_every_method_module_has_the_same_shape():
    assert methods.names()[0] == 'realmix'
    assert set(methods.names()) == {'realmix', 'mixmatch', 'supervised', 'fs_baseline', 'fs_mixup',
                                    'mixup', 'pi_model', 'mean_teacher', 'ict', 'vat',
                                    'pseudo_label', 'fixmatch', 'flexmatch', 'freematch'}
    for name in methods.names():
        method = methods.get(name)
        assert method.NAME == name and isinstance(method.NEEDS_UNLABELED, bool)
        assert all(isinstance(spec, hparams.Flag) for spec in method.FLAGS)
        assert callable(method.losses)
        common = set(spec.name for spec in hparams.COMMON_FLAGS)
        assert not common & set(spec.name for spec in method.FLAGS), name


def test_unknown_method_is_one_clear_error():
    with pytest.raises(UserError, match='unknown --method=nosuch; choose one of: realmix, '):
        methods.get('nosuch')


def test_fixmatch_trains_with_its_own_defaults_optimizer_and_weight_decay_form():
    specs = dict((s.name, s) for s in methods.flag_specs('fixmatch'))
    assert (specs['lr'].default, specs['wd'].default) == (0.03, 0.0005)  # fixmatch.py's __main__
    assert (specs['confidence'].default, specs['uratio'].default, specs['wu'].default) == (0.95, 7, 1.)
    assert dict((s.name, s) for s in methods.flag_specs('realmix'))['lr'].default == 0.002
    fixmatch, realmix = methods.get('fixmatch'), methods.get('realmix')
    assert not methods.decoupled_weight_decay(fixmatch) and methods.decoupled_weight_decay(realmix)
    assert methods.unlabeled_views(fixmatch) == ('weak', 'strong')
    assert methods.unlabeled_views(realmix) == ('weak', 'weak')
    assert methods.unlabeled_batch(fixmatch, dict(batch=64, uratio=7)) == 448
    assert methods.unlabeled_batch(realmix, dict(batch=64, uratio=7)) == 64
    with tf.Graph().as_default():
        optimizer = methods.optimizer(fixmatch, dict(lr=0.03, train_kimg=1), tf.constant(512))
        assert isinstance(optimizer, tf.train.MomentumOptimizer)
        assert optimizer._use_nesterov and optimizer._momentum == 0.9
        with tf.Session() as session:  # halfway: lr * cos(7 pi / 32)
            assert abs(session.run(optimizer._learning_rate) - 0.03 * np.cos(7 * np.pi / 32)) < 1e-7
        assert isinstance(methods.optimizer(realmix, dict(lr=0.002), None), tf.train.AdamOptimizer)


@pytest.mark.parametrize('flag, value, rule', [
    ('confidence', 0., 'in \\(0, 1\\]'), ('confidence', 1.01, 'in \\(0, 1\\]'),
    ('uratio', 0, '>= 1'), ('wu', -0.5, '>= 0')])
def test_fixmatch_refuses_flags_out_of_range_in_one_line(flag, value, rule):
    specs = methods.flag_specs('fixmatch')
    hp = dict(dict((s.name, s.default) for s in specs), scales=3, **{flag: value})
    with pytest.raises(UserError, match='^--%s=%s is out of range: it must be %s$' % (flag, value, rule)):
        hparams.check_flags(hp, specs)
    hparams.check_flags(dict(hp, **{flag: dict((s.name, s.default) for s in specs)[flag]}), specs)


def test_a_flag_two_methods_share_must_be_defined_alike():
    assert [s.name for s in methods.all_flags()].count('beta') == 1
    clash = hparams.Flag('float', 'beta', 0.5, 'other')
    with pytest.raises(UserError, match='--beta is defined twice'):
        hparams.merge(methods.all_flags() + [clash])


def test_run_names_hold_only_the_flags_a_method_reads():
    base = dict((s.name, s.default) for s in hparams.COMMON_FLAGS)
    for name, absent, present in (('supervised', ('beta', 'w_match', 'tsa'), ()),
                                  ('fs_mixup', ('w_match', 'tsa'), ('beta0.5',)),
                                  ('mixmatch', ('tsa', 'percent_mask'), ('beta0.5', 'w_match100')),
                                  ('realmix', (), ('beta0.75', 'w_match75', 'tsanone'))):
        specs = methods.flag_specs(name)
        hp = dict(base, method=name, **dict((s.name, s.default) for s in specs))
        run = hparams.experiment_name(hp)
        assert run.startswith(name + '_')
        assert not [k for k in absent if '_%s' % k in run], run
        assert all(part in run.split('_') or part in run for part in present), run


def test_mixup_mixes_each_labeled_image_with_its_mirror_and_trains_on_the_mixed_targets():
    """Images equal to their one-hot labels and an identity network: the logits are the mixed
    images, so they must equal the mixed targets, and the loss is CE(targets, softmax(targets))."""
    labels = np.array([0, 1, 2, 0], np.int64)
    images = np.eye(3, dtype=np.float32)[labels].reshape([4, 1, 1, 3])
    calls, outputs = [], []

    def classify(x, training, update_stats=True):
        calls.append((training, update_stats))
        outputs.append(tf.reshape(x, [4, 3]))
        return outputs[-1]

    with tf.Graph().as_default():
        tf.set_random_seed(1)
        losses = methods.get('fs_mixup').losses(
            dict(image=tf.constant(images), label=tf.constant(labels)), None, classify,
            dict(beta=0.75), tf.constant(0), 3)
        with tf.Session() as session:
            loss, logits = session.run([losses['loss'], outputs[0]])  # one draw of the MixUp weights
    assert calls == [(True, True)]  # one pass, updating batch-norm statistics
    one_hot = np.eye(3)[labels]
    lam = logits[np.arange(4), labels]
    assert ((lam >= 0.5 - 1e-6) & (lam <= 1 + 1e-6)).all()
    np.testing.assert_allclose(logits, lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot[::-1],
                               atol=1e-6)  # partner = the mirrored position
    targets = logits
    log_softmax = targets - np.log(np.exp(targets).sum(1, keepdims=True))
    assert loss == pytest.approx(-(targets * log_softmax).sum(1).mean(), rel=1e-5)


class ParsedFlag(object):
    """An absl flag's value as from_flags reads it."""

    def __init__(self, value, default, present):
        self.value, self.default, self.present = value, default, present


def test_each_method_keeps_its_own_default_of_a_shared_flag():
    """--beta is one absl flag (RealMix's 0.75 as its default); mixmatch defaults to 0.5 unless
    the command line sets it."""
    spec = dict((s.name, s) for s in methods.get('mixmatch').FLAGS)['beta']
    assert spec.default == 0.5
    assert hparams.flag_value(ParsedFlag(0.75, 0.75, False), spec) == 0.5
    assert hparams.flag_value(ParsedFlag(0.75, 0.75, True), spec) == 0.75  # --beta=0.75 given
    assert hparams.flag_value(ParsedFlag(0.3, 0.75, True), spec) == 0.3


def test_a_run_of_the_old_mixup_names_its_new_name(tmp_path):
    """A run saved as --method=mixup before names_revision 2 was MixUp-supervised, now fs_mixup."""
    run = tmp_path / 'run'
    (run / 'args').mkdir(parents=True)
    (run / 'args' / 'args.json').write_text('{"method": "mixup", "beta": 0.75}')
    with pytest.raises(UserError, match='old --method=mixup, which is now --method=fs_mixup'):
        hparams.check_run_folder(str(run), dict(method='mixup', beta=0.75))
    with pytest.raises(UserError, match='now --method=fs_mixup'):  # --eval_ckpt, inference
        inference.run_args(str(run / 'tf' / 'model.ckpt-64'))
    (run / 'args' / 'args.json').write_text('{"method": "mixup", "beta": 0.75, "names_revision": 2}')
    hparams.check_run_folder(str(run), dict(method='mixup', beta=0.75, names_revision=2))
