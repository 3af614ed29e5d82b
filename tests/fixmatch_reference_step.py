"""Runs one step of google-research/fixmatch's own FixMatch_RA model() graph (TF 1.15 only), for
tests/test_fixmatch_reference.py. Usage: python fixmatch_reference_step.py SOURCE_DIR CASE.json

SOURCE_DIR is the extracted google-research/fixmatch; the case names the model() arguments, an
.npz of inputs, a checkpoint to start from and where to write the results (.npz).
"""

import importlib
import json
import os
import sys
import tempfile
import types

import numpy as np

from reference_step import bare_model, ordered_updates


def stub_augment_module():
    """libml.augment as far as libml.data needs it at import: the real one builds a 16.8-million
    value --augment flag (2.5 GB, ~10 s) that model() never reads."""
    module = types.ModuleType('libml.augment')
    module.__getattr__ = lambda name: None  # AugmentPair, NOAUGMENT, augment_function, ...
    sys.modules['libml.augment'] = module


def import_fixmatch_ra(source_dir, flag_values):
    """FixMatch_RA, with absl flags parsed by hand (model() reads --batch and --train_kimg)."""
    sys.path[:0] = [source_dir, os.path.join(source_dir, 'ablation')]
    stub_augment_module()
    module = importlib.import_module('ab_fixmatch_ra')
    from absl import flags
    flags.FLAGS(['fixmatch_reference_step'] + ['--%s=%s' % kv for kv in sorted(flag_values.items())])
    return module.FixMatch_RA


def run_case(source_dir, case):
    tf = importlib.import_module('tensorflow')  # TF 1.15's whole 1.x API, as the reference binds it
    tf.logging.set_verbosity(tf.logging.ERROR)
    inputs = np.load(case['inputs'])
    cls = import_fixmatch_ra(source_dir, dict(case['flags'], train_dir=tempfile.mkdtemp()))
    model = bare_model(cls, case)
    with tf.Graph().as_default():
        model.step = tf.train.get_or_create_global_step()
        ops = model.model(**case['kwargs'])
        update_step = tf.assign_add(model.step, case['kwargs']['batch'])
        losses = dict((s.op.name, s.op.inputs[1]) for s in tf.get_collection(tf.GraphKeys.SUMMARIES)
                      if s.op.type == 'ScalarSummary')
        feed = {ops.xt: inputs['x'], ops.y: inputs['y'], ops.label: inputs['label']}
        with tf.Session() as session:
            tf.train.Saver().restore(session, case['init'])
            # The EMA after the update, as ours: the reference's EMA reads race with its update
            # (fixmatch-README.md), each shadow reading its weight before or after it by chance.
            optimizer_and_statistics, decay, ema_update = ordered_updates(ops.train_op, 'Momentum')
            assert not decay
            got_losses, _ = session.run([losses, optimizer_and_statistics], feed)
            session.run(ema_update)
            session.run(update_step)
            values = session.run(dict((v.op.name, v) for v in tf.global_variables()))
            raw, ema = session.run([ops.classify_raw, ops.classify_op], {ops.x: inputs['eval']})
    results = dict(('loss/' + k, v) for k, v in got_losses.items())
    results.update(('var/' + k, v) for k, v in values.items())
    np.savez(case['output'], variable_names=np.array(sorted(values)), eval_raw=raw, eval_ema=ema,
             **results)


if __name__ == '__main__':
    with open(sys.argv[2]) as f:
        run_case(sys.argv[1], json.load(f))
