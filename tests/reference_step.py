"""Runs one training step of the reference's own model() graphs (TF 1.15 only), for
tests/test_reference_methods.py. Usage: python reference_step.py SOURCE_DIR CASES.json

SOURCE_DIR is the extracted reference; each case of CASES.json names a method file and class,
its model() arguments, flag values, an .npz of inputs and fixed random draws, a checkpoint to
start from, and where to write the results (.npz) and the checkpoint after the step.
"""

import contextlib
import importlib.util
import json
import os
import sys
import types

import numpy as np


def stub_missing_modules():
    """What the reference imports but the TF 1.15 leg lacks or the tarball misses (see
    docs/faithfulness.md): easydict, keras.utils.np_utils, fully_supervised/lib."""
    class EasyDict(dict):
        __getattr__ = dict.__getitem__

        def __setattr__(self, key, value):
            self[key] = value
    modules = dict(easydict=dict(EasyDict=EasyDict), keras={}, **{'keras.utils': {},
                   'keras.utils.np_utils': {}, 'fully_supervised': {}, 'fully_supervised.lib': {},
                   'fully_supervised.lib.data': dict(DATASETS={}, DataSetFS=type('DataSetFS', (), {})),
                   'fully_supervised.lib.train': dict(
                       ClassifyFullySupervised=type('ClassifyFullySupervised', (), {}))})
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        module.__path__ = []
        sys.modules[name] = module


def import_reference(source_dir):
    """The reference's libml, importable (its data.py reads $ML_DATA; vat.py and ict.py import an
    augment_custom that its data.py lacks)."""
    os.environ.setdefault('ML_DATA', source_dir)
    sys.path.insert(0, source_dir)
    stub_missing_modules()
    import libml.data
    libml.data.augment_custom = libml.data.augment_cifar10
    import libml.data_pair, libml.models  # noqa: F401  (they define the flags model() reads)
    from absl import flags
    flags.DEFINE_string('tsa', 'none', 'TSA schedule (realmix.py defines it in __main__).')
    flags.DEFINE_float('percent_mask', -1., 'OOD masking (realmix.py defines it in __main__).')
    flags.DEFINE_integer('nclass', 10, 'Classes (realmix.py defines it in __main__).')
    return flags.FLAGS


def load_method(source_dir, path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(source_dir, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def fixed_draws(tf, draws):
    """Beta samples, shuffles and normal noise taken, in order, from `draws` while building."""
    queues = dict((kind, list(draws[kind])) for kind in ('beta', 'permutation', 'normal'))

    class FixedBeta(object):
        def __init__(self, *args, **kwargs):
            pass

        def sample(self, shape):
            return tf.constant(queues['beta'].pop(0).reshape([-1, 1, 1, 1]), tf.float32)

    saved = tf.distributions.Beta, tf.random_shuffle, tf.random_normal
    tf.distributions.Beta = FixedBeta
    tf.random_shuffle = lambda x: tf.gather(x, tf.constant(queues['permutation'].pop(0)))
    tf.random_normal = lambda shape: tf.constant(queues['normal'].pop(0), tf.float32)
    try:
        yield
    finally:
        tf.distributions.Beta, tf.random_shuffle, tf.random_normal = saved
    assert not any(queues.values()), 'draws left unused: %s' % queues


def summary_tensors(tf):
    """{summary name: the scalar it logs}: the reference's losses exist only as its summaries."""
    return dict((s.op.name, s.op.inputs[1]) for s in tf.get_collection(tf.GraphKeys.SUMMARIES))


def ordered_updates(train_op, optimizer='Adam'):
    """train_op's updates as (the optimizer's and batch-norm statistics, weight decay, EMA).

    The reference makes its decay, EMA and statistics ops before the optimizer's and groups them
    after it: tf.control_dependencies binds only ops made inside its block, so they race with the
    update (and with each other). The harness runs them in the order our graph fixes.
    google-research/fixmatch (optimizer 'Momentum') has no decay op: its loss holds the L2 term.
    """
    parts = ([], [], [])
    for op in train_op.control_inputs:
        if op.type == 'Assign':
            parts[1].append(op)
        elif op.name.startswith('ExponentialMovingAverage'):
            parts[2].append(op)
        else:
            assert op.name == optimizer or 'AssignMovingAvg' in op.name, op.name
            parts[0].append(op)
    assert len(parts[2]) == 1 and len([op for op in parts[0] if op.name == optimizer]) == 1
    return parts


def bare_model(cls, case):
    """An instance of a reference model class without its __init__ (which would build datasets
    and write a run folder): what model() reads, the dataset's shape and statistics, set by hand."""
    model = object.__new__(cls)
    model.dataset = types.SimpleNamespace(height=case['hwc'][0], width=case['hwc'][1],
                                          colors=case['hwc'][2], mean=0., std=1.)
    model.nclass = case['nclass']
    return model


def run_case(tf, source_dir, case):
    inputs = np.load(case['inputs'])
    draws = dict((kind, [inputs[k] for k in sorted(inputs.files) if k.startswith(kind + '_')])
                 for kind in ('beta', 'permutation', 'normal'))
    cls = getattr(load_method(source_dir, case['file']), case['class'])
    model = bare_model(cls, case)
    with tf.Graph().as_default():
        model.step = tf.train.get_or_create_global_step()
        vat_utils = sys.modules.get('third_party.vat_utils')
        if vat_utils is not None:  # its probe step (xi), as the test sets ours
            vat_utils.generate_perturbation.__defaults__ = (case['vat_xi'],)
        with fixed_draws(tf, draws):
            ops = model.model(**case['kwargs'])
        update_step = tf.assign_add(model.step, case['kwargs']['batch'])
        losses = summary_tensors(tf)
        feed = {ops.x: inputs['x'], ops.label: inputs['label']}
        if 'y' in ops:
            feed[ops.y] = inputs['y'] if len(ops.y.shape) == 5 else inputs['y'][:, 0]
        names = sorted(v.op.name for v in tf.global_variables())
        saver = tf.train.Saver()
        with tf.Session() as session:
            tf.train.Saver([v for v in tf.global_variables()]).restore(session, case['init'])
            adam_and_statistics, decay, ema_update = ordered_updates(ops.train_op)
            got_losses, _ = session.run([losses, adam_and_statistics], feed)
            session.run(decay)
            session.run(ema_update)
            session.run(update_step)
            values = session.run(dict((v.op.name, v) for v in tf.global_variables()))
            raw, ema = session.run([ops.classify_raw, ops.classify_op], {ops.x: inputs['eval']})
            saver.save(session, case['checkpoint'])
    results = dict(('loss/' + k, v) for k, v in got_losses.items())
    results.update(('var/' + k, v) for k, v in values.items())
    np.savez(case['output'], variable_names=np.array(names), eval_raw=raw, eval_ema=ema, **results)


def main(source_dir, cases_json):
    flag_values = import_reference(source_dir)
    # The module the reference's code binds (plain `tensorflow`, not compat.v1): fixed_draws
    # replaces its random functions there. On TF 1.15 it holds the whole 1.x API.
    tf = importlib.import_module('tensorflow')
    tf.logging.set_verbosity(tf.logging.ERROR)
    with open(cases_json) as f:
        cases = json.load(f)
    for case in cases:
        flag_values(['reference_step'] + ['--%s=%s' % kv for kv in sorted(case['flags'].items())])
        run_case(tf, source_dir, case)
        flag_values.unparse_flags()


if __name__ == '__main__':
    main(*sys.argv[1:])
