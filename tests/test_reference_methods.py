"""Every method, one step beside the reference's own model() graph (TF 1.15 leg only).

Both graphs start from one checkpoint (weights, batch-norm statistics, EMA shadows, Adam slots and
powers all set to non-trivial values), are fed one batch and take their MixUp coefficients,
partners and VAT noise from the same fixed draws (ours through libml.layers' hooks, the
reference's by replacing tf.distributions.Beta, tf.random_shuffle and tf.random_normal while its
graph is built: tests/reference_step.py). After one step the logged losses and every variable
must agree, and our evaluator on the reference's saved checkpoint gives its raw and ema
predictions. The reference runs in a subprocess: its package is also called libml.
"""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import methods
from libml import consistency, evaluation, layers, npu_config
from libml.graph import build_graph

tf.disable_v2_behavior()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = os.path.join(ROOT, '..', 'shared', 'reference', 'uizard-realmix-36dada5.tar.gz')
HWC, NCLASS, BATCH, STEP = (8, 8, 3), 4, 6, 2048
NET = dict(arch='resnet', scales=2, filters=8, repeat=1)
COMMON = dict(NET, lr=0.002, wd=0.02, ema=0.999, batch=BATCH, bn_momentum=0.999, train_kimg=8,
              epochs=1024, report_kimg=64, eval_batch=10, total_nimg=8 << 10)
# name: (reference file, class, our hyper-parameters (the reference's model() takes the same),
#        {our logged loss: the reference's summary}, draws (beta sizes, permutation sizes, normal))
MIX3 = 3 * BATCH
CASES = {
    'realmix': ('realmix.py', 'RealMix',
                dict(beta=0.75, w_match=75., warmup_kimg=4, tsa='linear_schedule', percent_mask=0.3),
                dict(xe='losses/xe', l2u='losses/l2u', loss='losses/overall'), ([MIX3], [MIX3], 0)),
    'mixmatch': ('mixmatch.py', 'MixMatch', dict(beta=0.5, w_match=100., warmup_kimg=4),
                 dict(xe='losses/xe', l2u='losses/l2u'), ([MIX3], [MIX3], 0)),
    'fs_baseline': ('fully_supervised/fs_baseline.py', 'FSBaseline', dict(smoothing=0.1),
                    dict(xe='losses/xe'), ([], [], 0)),
    'supervised': ('fully_supervised/fs_baseline.py', 'FSBaseline', dict(smoothing=0.),
                   dict(xe='losses/xe'), ([], [], 0)),
    'fs_mixup': ('fully_supervised/fs_mixup.py', 'FSMixup', dict(beta=0.5),
                 dict(xe='losses/xe'), ([BATCH], [], 0)),
    'mixup': ('mixup.py', 'Mixup', dict(beta=0.5), dict(xe='losses/xe', xeu='losses/xeu'),
              ([BATCH, BATCH], [], 0)),
    'pi_model': ('pi_model.py', 'PiModel', dict(consistency_weight=10., warmup_pos=0.4),
                 dict(xe='losses/xe', pm='losses/pm'), ([], [], 0)),
    'mean_teacher': ('mean_teacher.py', 'MeanTeacher', dict(consistency_weight=50., warmup_pos=0.4),
                     dict(xe='losses/xe', mt='losses/mt'), ([], [], 0)),
    'ict': ('ict.py', 'ICT', dict(consistency_weight=50., warmup_pos=0.4, beta=0.5),
            dict(xe='losses/xe', mt='losses/mt'), ([BATCH], [], 0)),
    'vat': ('vat.py', 'VAT', dict(vat=0.3, vat_eps=6., entmin_weight=0.06, warmup_pos=0.4),
            dict(xe='losses/xe', vat='losses/vat', entmin='losses/entmin'), ([], [], 1)),
    'pseudo_label': ('pseudo_label.py', 'PseudoLabel',
                     dict(consistency_weight=1., warmup_pos=0.4, threshold=0.4),
                     dict(xe='losses/xe', pl='losses/pl'), ([], [], 0)),
}
# VAT's probe step in both graphs. At the reference's 1e-6 the probe moves the logits by about
# their float32 rounding, so the direction it finds is partly rounding noise that no two
# implementations share: the VAT loss differed by 20 % at 1e-6, 0.15 % at 1e-3, 5e-6 at 1.
VAT_XI = 1.
# VAT's gradient runs through the probe's direction: float32 differences of 1e-5 in the Adam
# slots (1e-6 elsewhere); the 1e-5 for it.
ABSOLUTE_TOLERANCE = dict(vat=1e-5)
# Flags the reference reads from absl instead of model() arguments.
REFERENCE_FLAGS = ('tsa', 'percent_mask', 'train_kimg', 'epochs')

pytestmark = [
    pytest.mark.skipif(not os.path.exists(TARBALL), reason='no reference tarball at %s '
                       '(../shared is absent)' % TARBALL),
    pytest.mark.skipif(not tf.VERSION.startswith('1.'), reason='the reference imports '
                       'tf.contrib, tf.layers and tf.distributions: TensorFlow 1.x only, this is '
                       '%s' % tf.VERSION),
]


def inputs_of(name, seed):
    """The batch, evaluation images and fixed random draws of one case."""
    rng = np.random.RandomState(seed)
    beta_sizes, permutation_sizes, normals = CASES[name][4]
    values = dict(x=rng.uniform(-1, 1, (BATCH,) + HWC).astype(np.float32),
                  y=rng.uniform(-1, 1, (BATCH, 2) + HWC).astype(np.float32),
                  label=rng.randint(NCLASS, size=BATCH).astype(np.int32),
                  eval=rng.uniform(-1, 1, (10,) + HWC).astype(np.float32))
    for i, size in enumerate(beta_sizes):
        values['beta_%d' % i] = rng.beta(0.5, 0.5, size).astype(np.float32)
    for i, size in enumerate(permutation_sizes):
        values['permutation_%d' % i] = rng.permutation(size).astype(np.int32)
    for i in range(normals):
        values['normal_%d' % i] = rng.randn(BATCH, *HWC).astype(np.float32)
    return values


def fix_draws(monkeypatch, values):
    """Our MixUp coefficients, partners and VAT noise come from `values`, in order."""
    queues = dict((kind, [values[k] for k in sorted(values) if k.startswith(kind + '_')])
                  for kind in ('beta', 'permutation', 'normal'))
    monkeypatch.setattr(layers, 'sample_beta', lambda alpha, shape: tf.constant(
        queues['beta'].pop(0).reshape(shape)))
    monkeypatch.setattr(layers, 'random_permutation',
                        lambda count: tf.constant(queues['permutation'].pop(0)))
    monkeypatch.setattr(layers, 'random_normal', lambda shape: tf.constant(queues['normal'].pop(0)))
    return queues


def scramble(session, rng):
    """Every variable away from its initial value: EMA shadows off the weights, Adam's slots and
    powers as after a few steps, batch-norm statistics off 0 and 1; the step counter at STEP."""
    variables = tf.global_variables()
    feed = {}
    for v, value in zip(variables, session.run(variables)):
        name = v.op.name
        if name == 'global_step':
            value = STEP
        elif name.endswith('_power'):
            value = value ** 4
        elif name.endswith('/Adam_1'):
            value = (1e-3 * rng.randn(*value.shape)) ** 2
        elif name.endswith('/Adam'):
            value = 1e-3 * rng.randn(*value.shape)
        elif name.endswith('moving_variance'):
            value = rng.uniform(0.5, 1.5, value.shape)
        else:
            value = value + 0.05 * rng.randn(*value.shape)
        feed[v.initial_value] = np.asarray(value, v.dtype.base_dtype.as_numpy_dtype)
    session.run([v.initializer for v in variables], feed)  # one run, as Variable.load does each


class OurStep(object):
    """Our graph of one method, its session, and the results of its step."""

    def __init__(self, name, hp, values, folder):
        method = methods.get(name)
        device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(1)
            labeled = dict(image=tf.constant(values['x']), label=tf.constant(values['label']))
            unlabeled = dict(image=tf.constant(values['y'])) if method.NEEDS_UNLABELED else None
            self.ops = build_graph(hp, HWC, NCLASS, device, method, pipelines=[(labeled, unlabeled)])
            self.saver = tf.train.Saver()
            self.session = tf.Session()
            self.session.run(tf.global_variables_initializer())
            scramble(self.session, np.random.RandomState(5))
            self.init = self.saver.save(self.session, os.path.join(folder, 'init'),
                                        write_meta_graph=False)
            self.losses = self.session.run(self.ops['losses'])
            self.values = self.session.run(dict((v.op.name, v) for v in tf.global_variables()))

    def predictions(self, checkpoint, images):
        """Our evaluator's raw and EMA probabilities with `checkpoint`'s variables."""
        with self.graph.as_default():
            saved = set(name for name, _ in tf.train.list_variables(checkpoint))
            tf.train.Saver([v for v in tf.global_variables() if v.op.name in saved]).restore(
                self.session, checkpoint)
            evaluator = evaluation.Evaluator(self.session, self.ops, {}, None, [])
            return evaluator.predict(images, 'raw'), evaluator.predict(images, 'ema')


def reference_case(name, hp, folder, init):
    """The reference_step.py case of method `name`."""
    path, cls, own, _, _ = CASES[name]
    kwargs = dict((k, hp[k]) for k in ('lr', 'wd', 'ema', 'batch', 'arch', 'scales', 'filters',
                                      'repeat'))
    kwargs.update((k, v) for k, v in own.items() if k not in REFERENCE_FLAGS)
    return dict(file=path, **{'class': cls}, kwargs=kwargs, hwc=list(HWC), nclass=NCLASS,
                flags=dict(dict((k, hp[k]) for k in REFERENCE_FLAGS if k in hp), nclass=NCLASS,
                           batch=BATCH),
                inputs=os.path.join(folder, 'inputs.npz'), init=init,
                output=os.path.join(folder, 'reference.npz'),
                checkpoint=os.path.join(folder, 'reference', 'model.ckpt'), vat_xi=VAT_XI)


@pytest.fixture(scope='module')
def steps(tmp_path_factory):
    """{method: (our step, the reference's results)}: each graph built once, the reference's all
    in one subprocess."""
    root = tmp_path_factory.mktemp('reference')
    with tarfile.open(TARBALL) as tar:
        tar.extractall(str(root / 'source'))
    source = str(next((root / 'source').iterdir()))
    ours, cases = {}, []
    for seed, name in enumerate(sorted(CASES)):
        folder = str(root / name)
        os.makedirs(folder)
        hp = dict(COMMON, method=name)
        hp.update((spec.name, spec.default) for spec in methods.get(name).FLAGS)
        hp.update(CASES[name][2])
        values = inputs_of(name, seed)
        np.savez(os.path.join(folder, 'inputs.npz'), **values)
        monkeypatch = pytest.MonkeyPatch()
        try:
            monkeypatch.setattr(consistency, 'VAT_XI', VAT_XI)
            left = fix_draws(monkeypatch, values)
            ours[name] = OurStep(name, hp, values, folder)
        finally:
            monkeypatch.undo()
        assert not any(left.values()), 'draws left unused by our %s: %s' % (name, left)
        cases.append(reference_case(name, hp, folder, ours[name].init))
    with open(str(root / 'cases.json'), 'w') as f:
        json.dump(cases, f)
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'reference_step.py'), source,
                          str(root / 'cases.json')], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True)
    assert run.returncode == 0, run.stdout[-3000:]
    yield dict((name, (ours[name], dict(np.load(case['output'])), case))
               for name, case in zip(sorted(ours), cases))
    for step in ours.values():
        step.session.close()


@pytest.mark.parametrize('name', sorted(CASES))
def test_one_step_equals_the_reference_step(steps, name):
    ours, reference, _ = steps[name]
    names = list(reference['variable_names'])
    extra = set(ours.values) - set(names)  # our own bookkeeping (a stop vote), not the model's
    assert set(names) <= set(ours.values) and not [n for n in extra if n.startswith('classify')]
    for our_name, reference_name in CASES[name][3].items():
        np.testing.assert_allclose(ours.losses[our_name], reference['loss/' + reference_name],
                                   rtol=1e-5, atol=1e-6, err_msg=our_name)
    atol = ABSOLUTE_TOLERANCE.get(name, 1e-6)
    for variable in names:
        np.testing.assert_allclose(ours.values[variable], reference['var/' + variable], rtol=1e-5,
                                   atol=atol, err_msg=variable)


@pytest.mark.parametrize('name', ['realmix', 'mean_teacher', 'fs_mixup'])
def test_our_evaluation_of_a_reference_checkpoint_gives_its_raw_and_ema_predictions(steps, name):
    ours, reference, case = steps[name]
    images = np.load(case['inputs'])['eval']
    raw, ema = ours.predictions(case['checkpoint'], images)
    for kind, got in (('raw', raw), ('ema', ema)):
        np.testing.assert_allclose(got, reference['eval_' + kind], rtol=1e-5, atol=1e-6,
                                   err_msg=kind)
        assert (got.argmax(1) == reference['eval_' + kind].argmax(1)).all()
    assert np.abs(raw - ema).max() > 1e-3  # the two rows really read different weights
