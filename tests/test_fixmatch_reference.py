"""FixMatch one step beside google-research/fixmatch's own FixMatch_RA model() graph (TF 1.15 leg).

Both graphs start from one checkpoint (weights, batch-norm statistics, EMA shadows and momentum
slots set to non-trivial values, the step counter inside the cosine schedule) and are fed one batch:
labeled images, and the same weak and strong views of the unlabeled ones. The confidence threshold
lies between the top probabilities of two weak views less than 2 % apart, so the mask keeps some
images and drops others, and a threshold 1 % off flips it. After one step the logged losses, the
mask, the learning rate and every variable agree; EMA shadows by our rule (after the update),
since the reference's EMA reads race with its update (tests/fixmatch_reference_step.py).
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
from libml import evaluation, models, npu_config
from libml.graph import build_graph
from test_reference_methods import scramble

tf.disable_v2_behavior()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = os.path.join(ROOT, '..', 'shared', 'reference', 'google-research-fixmatch-d4985a1.tar.gz')
HWC, NCLASS, BATCH, URATIO = (8, 8, 3), 4, 6, 4
HP = dict(method='fixmatch', arch='resnet', scales=2, filters=8, repeat=1, lr=0.03, wd=0.0005,
          ema=0.999, batch=BATCH, bn_momentum=0.999, train_kimg=8, epochs=1024, report_kimg=64,
          eval_batch=10, total_nimg=8 << 10, uratio=URATIO, wu=1.)
# {our logged scalar: the reference's summary}
LOGGED = dict(xe='losses/xe', xeu='losses/xeu', wd='losses/wd', mask='monitors/mask',
              lr='monitors/lr')

# The reference interleaves the rows before its one pass: sums over the batch (batch moments, the
# bias gradients) add in another order, ~1e-6 apart in the gradients and momentum slots.
VARIABLE_ATOL = 1e-5

pytestmark = [
    pytest.mark.skipif(not os.path.exists(TARBALL), reason='no reference tarball at %s '
                       '(../shared is absent)' % TARBALL),
    pytest.mark.skipif(not tf.VERSION.startswith('1.'), reason='the reference uses tf.layers: '
                       'TensorFlow 1.x only, this is %s' % tf.VERSION),
]


def inputs(seed=0):
    rng = np.random.RandomState(seed)
    return dict(x=rng.uniform(-1, 1, (BATCH,) + HWC).astype(np.float32),
                y=rng.uniform(-1, 1, (BATCH * URATIO, 2) + HWC).astype(np.float32),
                label=rng.randint(NCLASS, size=BATCH).astype(np.int32),
                eval=rng.uniform(-1, 1, (10,) + HWC).astype(np.float32))


def weak_top_probabilities(checkpoint, values):
    """Each weak view's top probability in the step's training-mode pass, from `checkpoint`."""
    with tf.Graph().as_default():
        classify = models.classifier_from_hp(dict(HP, nclass=NCLASS))
        stack = np.concatenate([values['x'], values['y'][:, 0], values['y'][:, 1]])
        logits = classify(tf.constant(stack), training=True)
        with tf.Session() as session:
            tf.train.Saver(tf.global_variables('classify')).restore(session, checkpoint)
            probs = session.run(tf.nn.softmax(logits))[BATCH:BATCH * (1 + URATIO)]
    return probs.max(1)


def threshold_between_close_neighbours(top):
    """A threshold between the two adjacent top probabilities that lie closest (ratio < 1.02)."""
    ordered = np.sort(top)
    ratios = ordered[1:] / ordered[:-1]
    i = int(np.argmin(ratios))
    assert ratios[i] < 1.02, 'no two top probabilities within 2 %%: %s' % ordered
    return float(np.sqrt(ordered[i] * ordered[i + 1]))


class OurStep(object):
    """Our FixMatch graph from checkpoint `init` (or scrambled and saved there), one step taken."""

    def __init__(self, hp, values, folder, init=None):
        device = npu_config.setup('cpu', 'fp32', log=lambda *a: None)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(1)
            labeled = dict(image=tf.constant(values['x']), label=tf.constant(values['label']))
            unlabeled = dict(image=tf.constant(values['y']),
                             index=tf.constant(np.arange(BATCH * URATIO, dtype=np.int64)))
            self.ops = build_graph(hp, HWC, NCLASS, device, methods.get('fixmatch'),
                                   pipelines=[(labeled, unlabeled)])
            saver = tf.train.Saver()
            self.session = tf.Session()
            if init is None:
                self.session.run(tf.global_variables_initializer())
                scramble(self.session, np.random.RandomState(5))
                init = saver.save(self.session, os.path.join(folder, 'init'), write_meta_graph=False)
            else:
                saver.restore(self.session, init)
            self.init = init
            self.losses = self.session.run(self.ops['losses'])
            self.values = self.session.run(dict((v.op.name, v) for v in tf.global_variables()))
            evaluator = evaluation.Evaluator(self.session, self.ops, {}, None, [])
            self.eval_raw = evaluator.predict(values['eval'], 'raw')
            self.eval_ema = evaluator.predict(values['eval'], 'ema')
        self.session.close()


@pytest.fixture(scope='module')
def steps(tmp_path_factory):
    """(our step, the reference's results, the threshold used)."""
    root = tmp_path_factory.mktemp('fixmatch')
    with tarfile.open(TARBALL) as tar:
        tar.extractall(str(root / 'source'))
    source = str(next((root / 'source').iterdir()))
    values = inputs()
    np.savez(str(root / 'inputs.npz'), **values)
    probe = OurStep(dict(HP, confidence=0.5), values, str(root))
    confidence = threshold_between_close_neighbours(weak_top_probabilities(probe.init, values))
    ours = OurStep(dict(HP, confidence=confidence), values, str(root), init=probe.init)
    kwargs = dict((k, HP[k]) for k in ('lr', 'wd', 'wu', 'uratio', 'ema', 'batch', 'arch', 'scales',
                                      'filters', 'repeat'))
    case = dict(kwargs=dict(kwargs, confidence=confidence), hwc=list(HWC), nclass=NCLASS,
                flags=dict(batch=BATCH, train_kimg=HP['train_kimg']), init=ours.init,
                inputs=str(root / 'inputs.npz'), output=str(root / 'reference.npz'))
    with open(str(root / 'case.json'), 'w') as f:
        json.dump(case, f)
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'fixmatch_reference_step.py'),
                          source, str(root / 'case.json')], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True)
    assert run.returncode == 0, run.stdout[-3000:]
    return ours, dict(np.load(case['output'])), confidence


def test_the_tested_mask_keeps_some_images_and_drops_others(steps):
    ours, reference, _ = steps
    kept = reference['loss/monitors/mask'] * BATCH * URATIO
    assert 1 <= round(kept) <= BATCH * URATIO - 1
    assert ours.losses['xeu'] > 0.1  # the kept images train the strong views


def test_one_step_equals_the_reference_step(steps):
    ours, reference, _ = steps
    names = list(reference['variable_names'])
    assert any(name.endswith('/Momentum') for name in names)
    extra = set(ours.values) - set(names)  # our own bookkeeping (a stop vote), not the model's
    assert set(names) <= set(ours.values) and not [n for n in extra if n.startswith('classify')]
    for our_name, reference_name in LOGGED.items():
        np.testing.assert_allclose(ours.losses[our_name], reference['loss/' + reference_name],
                                   rtol=1e-5, atol=1e-6, err_msg=our_name)
    for variable in names:
        np.testing.assert_allclose(ours.values[variable], reference['var/' + variable], rtol=1e-5,
                                   atol=VARIABLE_ATOL, err_msg=variable)


def test_raw_and_ema_predictions_after_the_step_equal_the_reference(steps):
    ours, reference, _ = steps
    for kind, got in (('raw', ours.eval_raw), ('ema', ours.eval_ema)):
        np.testing.assert_allclose(got, reference['eval_' + kind], rtol=1e-5, atol=1e-6,
                                   err_msg=kind)
    assert np.abs(ours.eval_raw - ours.eval_ema).max() > 1e-3
