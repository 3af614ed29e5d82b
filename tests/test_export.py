"""scripts/export.py on a tiny trained run: frozen graph and SavedModel against the evaluation graph,
reproducible bytes, the NPU graph audit, and refused input that leaves nothing behind."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

import tiny_data
from conftest import ROOT, assert_one_line_error

# test_train.py's TINY settings, one epoch of 1 kimg.
# MixUp-supervised: this file's training run is also the end-to-end run of --method=fs_mixup.
TINY = ['--method=fs_mixup', '--arch=convnet', '--filters=8', '--batch=8', '--report_kimg=1',
        '--save_kimg=1', '--tune_kimg=1', '--eval_batch=16', '--device=cpu', '--seed=1',
        '--ema=0.9', '--train_kimg=1']
EXPORT = os.path.join(ROOT, 'scripts', 'export.py')
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')

# Loads a SavedModel in a fresh process with the TF 1 loader (TF 1.15 and 2.x) and, on TF 2.x,
# also as a TF 2 object; writes the outputs of the serving_default signature.
LOAD_SAVEDMODEL = r'''
import sys
import numpy as np
import tensorflow as tf
folder, images_path, out_path = sys.argv[1:]
images = np.load(images_path)
v1 = tf.compat.v1
with v1.Graph().as_default(), v1.Session() as session:
    meta = v1.saved_model.loader.load(session, ['serve'], folder)
    signature = meta.signature_def['serving_default']
    probabilities, classes = session.run(
        [signature.outputs['probabilities'].name, signature.outputs['classes'].name],
        {signature.inputs['images'].name: images})
out = dict(probabilities=probabilities, classes=classes)
if int(tf.__version__.split('.')[0]) >= 2:
    serve = tf.saved_model.load(folder).signatures['serving_default']
    result = serve(images=tf.constant(images))
    out.update(v2_probabilities=result['probabilities'].numpy(), v2_classes=result['classes'].numpy())
np.savez(out_path, **out)
'''


def run(args, **kwargs):
    return subprocess.Popen([sys.executable] + args, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, **kwargs)


def finish(process, timeout=240):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def read_graph_def(path):
    graph_def = tf.GraphDef()
    with open(path, 'rb') as f:
        graph_def.ParseFromString(f.read())
    return graph_def


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A tiny MixUp-supervised run trained for one epoch, exported with the default settings."""
    root = str(tmp_path_factory.mktemp('data'))
    dataset = tiny_data.make_ssl_dataset(root) + '-12'
    train_dir = str(tmp_path_factory.mktemp('runs'))
    env = dict(ENV, ML_DATA=root)
    trained = subprocess.run([sys.executable, os.path.join(ROOT, 'realmix.py'),
                              '--dataset=' + dataset, '--train_dir=' + train_dir] + TINY,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=240)
    assert trained.returncode == 0, trained.stdout
    runs = glob.glob(os.path.join(train_dir, '*', '*'))
    assert len(runs) == 1 and os.path.basename(runs[0]).startswith('fs_mixup_arch'), runs
    assert 'w_match' not in runs[0] and '_beta0.5_' in runs[0]  # named by what fs_mixup reads
    assert os.path.isfile(os.path.join(runs[0], 'result.txt'))
    run_dir = runs[0]
    # The default export, and a second one of the same checkpoint (run side by side: TensorFlow's
    # start-up dominates on small machines).
    again = os.path.join(str(tmp_path_factory.mktemp('again')), 'export')
    first, second = run([EXPORT, run_dir]), run([EXPORT, run_dir, '--ckpt=1024', '--out=' + again])
    code, out, err = finish(first)
    assert code == 0, out + err
    code, again_out, again_err = finish(second)
    assert code == 0, again_out + again_err
    from libml import data, records
    images, labels = records.load_arrays(data.resolve(dataset, root=root).test_file)
    return dict(root=root, run_dir=run_dir, export_dir=os.path.join(run_dir, 'export'), output=out,
                again=again, images=images, labels=labels)


@pytest.fixture(scope='module')
def reference(exported):
    """EMA probabilities of the test images from the evaluation graph (as realmix.py --eval_ckpt)."""
    from libml import data, evaluation, npu_config
    from libml.graph import build_graph
    from libml.inference import run_args
    checkpoint = os.path.join(exported['run_dir'], 'tf', 'model.ckpt-1024')
    _, hp = run_args(checkpoint)
    shape = [hp['height'], hp['width'], hp['colors']]
    with tf.Graph().as_default():
        ops = build_graph(hp, shape, hp['nclass'], npu_config.setup('cpu'))
        saver = tf.train.Saver()
        with tf.Session() as session:
            saver.restore(session, checkpoint)
            evaluator = evaluation.Evaluator(session, ops, {}, None, hp['class_names'])
            return evaluator.predict(data.to_float(exported['images']), 'ema')


def test_export_json_describes_the_model_and_its_checkpoint(exported):
    with open(os.path.join(exported['export_dir'], 'export.json')) as f:
        info = json.load(f)
    with open(os.path.join(exported['run_dir'], 'stats.json')) as f:
        stats = json.load(f)
    assert info['input'] == dict(name='images', tensor='images:0', dtype='uint8', shape=[1, 8, 8, 1],
                                 layout='NHWC', scaling=info['input']['scaling'])
    assert [(o['name'], o['dtype'], o['shape']) for o in info['outputs']] == [
        ('probabilities', 'float32', [1, 3]), ('classes', 'int32', [1])]
    assert info['class_names'] == ['class0', 'class1', 'class2']
    assert info['checkpoint'] == os.path.join('tf', 'model.ckpt-1024') and info['step'] == 1024
    assert info['test_accuracy'] == stats['table']['ema']['test']
    assert info['files']['pb'] == 'realmix.pb'
    assert info['files']['savedmodel']['input_shape'] == [None, 8, 8, 1]
    assert sorted(os.listdir(exported['export_dir'])) == ['export.json', 'realmix.pb', 'savedmodel']
    assert 'Exported' in exported['output']


def test_frozen_graph_gives_the_evaluation_graph_predictions(exported, reference):
    graph_def = read_graph_def(os.path.join(exported['export_dir'], 'realmix.pb'))
    with tf.Graph().as_default():
        images, probabilities, classes = tf.import_graph_def(
            graph_def, name='', return_elements=['images:0', 'probabilities:0', 'classes:0'])
        assert images.shape.as_list() == [1, 8, 8, 1] and images.dtype == tf.uint8
        assert classes.dtype == tf.int32
        with tf.Session() as session:
            out = [session.run([probabilities, classes], {images: image[None]})
                   for image in exported['images']]
    probs = np.concatenate([p for p, _ in out])
    predicted = np.concatenate([c for _, c in out])
    np.testing.assert_array_equal(predicted, reference.argmax(1))
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    # The exported model scores what the run's table says for this checkpoint.
    with open(os.path.join(exported['run_dir'], 'stats.json')) as f:
        accuracy = json.load(f)['table']['ema']['test']
    assert (predicted == exported['labels']).mean() * 100 == pytest.approx(accuracy)


def test_savedmodel_in_a_fresh_process_gives_the_same_predictions(exported, reference, tmp_path):
    script, images, out = [str(tmp_path / name) for name in ('load.py', 'images.npy', 'out.npz')]
    with open(script, 'w') as f:
        f.write(LOAD_SAVEDMODEL)
    np.save(images, exported['images'])
    code, stdout, err = finish(run([script, os.path.join(exported['export_dir'], 'savedmodel'),
                                    images, out]))
    assert code == 0, stdout + err
    results = np.load(out)
    prefixes = ['', 'v2_'] if 'v2_classes' in results else ['']
    for prefix in prefixes:
        np.testing.assert_array_equal(results[prefix + 'classes'], reference.argmax(1))
        np.testing.assert_allclose(results[prefix + 'probabilities'], reference, atol=1e-5)


def test_frozen_graph_has_no_python_or_variable_ops_and_passes_the_audit(exported):
    from libml import export, graph_audit
    graph_def = read_graph_def(os.path.join(exported['export_dir'], 'realmix.pb'))
    ops = set(node.op for node in graph_def.node)
    assert not ops & set(graph_audit.PYTHON_OPS)
    assert not ops & set(['Variable', 'VariableV2', 'VarHandleOp', 'ReadVariableOp', 'Assign',
                          'IteratorGetNext', 'IteratorV2'])
    assert not any('Adam' in node.name for node in graph_def.node)
    assert not graph_def.library.function
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name='')
        outputs = [graph.get_tensor_by_name('probabilities:0'), graph.get_tensor_by_name('classes:0')]
        assert graph_audit.audit_train_graph(graph, outputs) == []
    assert export.audit(graph_def) == []


def test_second_export_of_the_checkpoint_is_byte_identical(exported):
    for name in ('realmix.pb', 'export.json', os.path.join('savedmodel', 'saved_model.pb')):
        with open(os.path.join(exported['export_dir'], name), 'rb') as f:
            first = f.read()
        with open(os.path.join(exported['again'], name), 'rb') as f:
            assert f.read() == first, name


@pytest.fixture
def bad_runs(exported, tmp_path):
    """A run folder without args.json, and the run's checkpoints under another network's args."""
    no_args = tmp_path / 'no_args'
    shutil.copytree(os.path.join(exported['run_dir'], 'tf'), str(no_args / 'tf'))
    other = tmp_path / 'other_network'
    shutil.copytree(os.path.join(exported['run_dir'], 'tf'), str(other / 'tf'))
    with open(os.path.join(exported['run_dir'], 'args', 'args.json')) as f:
        args = json.load(f)
    (other / 'args').mkdir()
    (other / 'args' / 'args.json').write_text(json.dumps(dict(args, filters=16)))
    return dict(no_args=str(no_args), other=str(other), out=str(tmp_path / 'out'))


def leftovers(*folders):
    """Temporary files or folders (dot names) and partial exports in `folders`."""
    return [p for folder in folders for p in glob.glob(os.path.join(folder, '.*'))
            + glob.glob(os.path.join(folder, 'export*'))]


def test_bad_input_is_refused_before_anything_is_written(exported, bad_runs):
    from libml import export
    from libml.utils import UserError
    run_dir, out = exported['run_dir'], bad_runs['out']
    cases = [
        (dict(run_dir=bad_runs['no_args']), 'args/args.json'),
        (dict(run_dir=run_dir, step=999, out_dir=out), 'no checkpoint at step 999'),
        (dict(run_dir=run_dir), 'already exists; remove it or pass --out'),
        (dict(run_dir=run_dir, batch=0, out_dir=out), '--batch=0'),
        # Fails while restoring, after the temporary folder was made.
        (dict(run_dir=bad_runs['other'], out_dir=out), 'with shape'),
    ]
    before = sorted(os.listdir(run_dir))
    for kwargs, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            export.export(log=lambda *_: None, **kwargs)
    with pytest.raises(UserError, match='unknown format onnx'):
        export.parse_formats('pb,onnx')
    assert not os.path.exists(out)
    assert sorted(os.listdir(run_dir)) == before
    assert leftovers(os.path.dirname(out), bad_runs['no_args'], bad_runs['other']) == []


def test_command_line_error_is_one_line_with_exit_status_1(exported, bad_runs):
    # Refused while restoring, with a session started and the temporary folder made.
    code, out, err = finish(run([EXPORT, bad_runs['other'], '--out=' + bad_runs['out']]))
    assert_one_line_error(code, err, 'holds classify/', 'with shape')
    assert not os.path.exists(bad_runs['out'])
    assert leftovers(os.path.dirname(bad_runs['out']), bad_runs['other']) == []


def test_export_graph_matches_build_graph_for_a_whitened_resnet(tmp_path):
    """The frozen export computes what the evaluation graph computes (here with input whitening
    and residual blocks, which the tiny convnet run does not exercise)."""
    from libml import data, export, npu_config
    from libml.graph import build_graph
    hp = dict(arch='resnet', scales=1, filters=4, repeat=1, bn_momentum=0.9, ema=0.9,
              whiten_stats=([0.2, -0.1, 0.05], [0.5, 0.6, 0.7]), height=8, width=8, colors=3,
              nclass=3, eval_batch=4, method='realmix')
    images = np.random.RandomState(3).randint(0, 256, [4, 8, 8, 3]).astype(np.uint8)
    checkpoint = str(tmp_path / 'model.ckpt-7')
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        ops = build_graph(hp, [8, 8, 3], 3, npu_config.setup('cpu'))
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            # Distinct raw weights, shadows and statistics, so a mix-up of them shows.
            for variable in tf.global_variables():
                shape = variable.shape.as_list()
                noise = np.random.RandomState(len(variable.op.name)).uniform(0.5, 1.5, shape)
                variable.load(noise.astype(variable.dtype.as_numpy_dtype), session)
            reference = session.run(ops['probs_ema'], {
                ops['eval_images']: data.to_float(images)})
            tf.train.Saver().save(session, checkpoint, write_meta_graph=False)
    frozen = export.freeze(hp, checkpoint, 4)
    with tf.Graph().as_default():
        inputs, probabilities, _ = export.import_frozen(frozen)
        with tf.Session() as session:
            probs = session.run(probabilities, {inputs: images})
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    assert export.audit(frozen) == []
