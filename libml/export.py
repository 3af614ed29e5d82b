"""Export a run's EMA classifier for deployment: a frozen GraphDef (Ascend ATC, TF C API) and a
SavedModel (TensorFlow Serving), with export.json describing both.

The network is rebuilt from the run's args/args.json by `graph.build_graph`, and its EMA
evaluation tower is exported: inference-mode batch norm with the raw moving statistics, trainable
weights replaced by their moving averages. The exported graphs take uint8 images and scale them
to [-1, 1] themselves.
"""

import contextlib
import json
import os
import shutil

import tensorflow.compat.v1 as tf
from tensorflow.core.protobuf import saved_model_pb2

from libml import data, graph_audit, run_folder
from libml.graph import build_graph
from libml.utils import UserError, error_text, write_problem, write_problems_reported, write_text_atomic

FORMATS = ('pb', 'savedmodel')
INPUT = 'images'
PROBABILITIES = 'probabilities'
CLASSES = 'classes'
CLASSES_DTYPE = tf.int32  # argmax index; int32 is what ATC and most runtimes take natively
PB_NAME = 'realmix.pb'
SAVEDMODEL_DIR = 'savedmodel'
INFO_NAME = 'export.json'
VARIABLE_OPS = frozenset(['Variable', 'VariableV2', 'VarHandleOp', 'ReadVariableOp',
                          'AssignVariableOp', 'Assign'])


def run_hparams(run_dir):
    """The hyperparameters of a run folder (RUN/args/args.json); UserError when it has none."""
    if not os.path.isdir(run_dir):
        raise UserError('%s: no such run folder' % run_dir)
    hp = run_folder.read_args(run_dir)
    if hp is None:
        raise UserError('%s has no args/args.json, so the network cannot be rebuilt; pass a run '
                        'folder made by realmix.py (TRAIN_DIR/DATASET/EXPERIMENT)' % run_dir)
    return hp


def parse_formats(text):
    """'pb,savedmodel' -> ['pb', 'savedmodel'] (in FORMATS order); UserError on unknown names."""
    names = [name.strip() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise UserError('--format=%s: %s; use a comma-separated list of %s' % (
            text, 'unknown format %s' % ', '.join(unknown) if unknown else 'no format',
            ', '.join(FORMATS)))
    return [name for name in FORMATS if name in names]


def image_shape(hp):
    return [int(hp['height']), int(hp['width']), int(hp['colors'])]


def build_inference_graph(hp, batch):
    """The EMA classifier on uint8 NHWC images, in the default graph.

    Returns (images, probabilities, classes); `batch` None gives a dynamic batch. Freezing keeps
    only what the outputs need, so the raw-weight and statistics towers drop out.
    """
    images = tf.placeholder(tf.uint8, [batch] + image_shape(hp), INPUT)
    ops = build_graph(hp, image_shape(hp), int(hp['nclass']), eval_images=data.to_float(images))
    probabilities = tf.identity(ops['probs_ema'], name=PROBABILITIES)
    classes = tf.argmax(probabilities, axis=1, output_type=CLASSES_DTYPE, name=CLASSES)
    return images, probabilities, classes


def freeze(hp, checkpoint, batch):
    """A GraphDef of the EMA classifier with the checkpoint's weights as constants, holding only
    what the outputs need (no variables, optimizer, iterators or training towers)."""
    with tf.Graph().as_default() as graph:
        # Reference variables whatever the TF behaviour (resource variables would leave other
        # read ops): the same frozen nodes with TF 2 behaviour on or off.
        with tf.variable_scope(tf.get_variable_scope(), use_resource=False):
            build_inference_graph(hp, batch)
        restore = run_folder.CheckedRestore(tf.global_variables())
        with tf.Session(graph=graph, config=tf.ConfigProto(device_count={'GPU': 0})) as session:
            restore.restore(session, checkpoint)
            frozen = tf.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), [PROBABILITIES, CLASSES])
    return _portable(frozen)


def _portable(graph_def):
    """Without device placements and colocation hints (they can name nodes freezing removes;
    importers and ATC place the graph themselves), then only the nodes the outputs need."""
    out = tf.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        node.device = ''
        if '_class' in node.attr:
            del node.attr['_class']
    out = tf.graph_util.extract_sub_graph(out, [PROBABILITIES, CLASSES])
    functions = set(f.signature.name for f in out.library.function)
    if not any(node.op in functions for node in out.node):
        out.ClearField('library')  # helpers TF 2.x registers in every graph; the network calls none
    return out


def import_frozen(graph_def):
    """Import a frozen export into the default graph: (images, probabilities, classes) tensors."""
    return tf.import_graph_def(graph_def, name='', return_elements=[
        INPUT + ':0', PROBABILITIES + ':0', CLASSES + ':0'])


def audit(graph_def):
    """Problems that keep a frozen export off the NPU (graph_audit's checks on the cone of the
    outputs: Python ops, string tensors, static shapes), plus any variable left; [] when clean."""
    with tf.Graph().as_default() as graph:
        _, probabilities, classes = import_frozen(graph_def)
        problems = graph_audit.audit_train_graph(graph, [probabilities, classes])
    problems += ['variable op %s (%s) left in the frozen graph' % (node.name, node.op)
                 for node in graph_def.node if node.op in VARIABLE_OPS]
    return problems


def write_pb(graph_def, path):
    """The GraphDef's bytes, serialized deterministically (same graph, same bytes)."""
    with open(path, 'wb') as f:
        f.write(graph_def.SerializeToString(deterministic=True))


def write_savedmodel(graph_def, folder):
    """A SavedModel (tag 'serve', signature 'serving_default') of a frozen dynamic-batch export:
    input `images`, outputs `probabilities` and `classes`; loads in TF 1.15 and TF 2.x."""
    with tf.Graph().as_default() as graph:
        images, probabilities, classes = import_frozen(graph_def)
        signature = tf.saved_model.signature_def_utils.predict_signature_def(
            inputs={INPUT: images},
            outputs={PROBABILITIES: probabilities, CLASSES: classes})
        builder = tf.saved_model.builder.SavedModelBuilder(folder)
        with tf.Session(graph=graph) as session:
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.tag_constants.SERVING],
                signature_def_map={
                    tf.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY: signature},
                strip_default_attrs=True,
                # Frozen: nothing to save. An empty saver adds no save ops, whose TF 1.x version
                # embeds a random temporary name (the same model would differ byte for byte).
                saver=tf.train.Saver(var_list=[], allow_empty=True))
        builder.save()
    # TF 1.x serializes protobuf maps (attrs, signatures) in any order: write a canonical form.
    path = os.path.join(folder, 'saved_model.pb')
    saved_model = saved_model_pb2.SavedModel()
    with open(path, 'rb') as f:
        saved_model.ParseFromString(f.read())
    with open(path, 'wb') as f:
        f.write(saved_model.SerializeToString(deterministic=True))


def checkpoint_accuracy(run_dir, step):
    """The EMA test accuracy of RUN/stats.json when it was measured at `step`, else None."""
    try:
        with open(run_folder.stats_path(run_dir)) as f:
            stats = json.load(f)
        if stats.get('step') != step:
            return None
        value = stats['table']['ema']['test']
    except (IOError, OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if value is not None else None


def export_info(hp, run_dir, checkpoint, batch, formats):
    """The contents of export.json: what a deployment needs to feed and read the model."""
    shape = image_shape(hp)
    nclass = int(hp['nclass'])
    step = run_folder.checkpoint_step(checkpoint)
    if 'pb' not in formats:
        batch = None  # the SavedModel alone: any batch
    info = dict(
        input=dict(name=INPUT, tensor=INPUT + ':0', dtype='uint8', shape=[batch] + shape,
                   layout='NHWC', scaling='pixels 0..255, scaled to [-1, 1] inside the graph'),
        outputs=[dict(name=PROBABILITIES, tensor=PROBABILITIES + ':0', dtype='float32',
                      shape=[batch, nclass]),
                 dict(name=CLASSES, tensor=CLASSES + ':0', dtype=CLASSES_DTYPE.name, shape=[batch])],
        class_names=list(hp.get('class_names') or [str(i) for i in range(nclass)]),
        checkpoint=os.path.relpath(os.path.abspath(checkpoint), os.path.abspath(run_dir)),
        step=step, kimg=step / 1024., test_accuracy=checkpoint_accuracy(run_dir, step),
        weights='ema', dataset=hp.get('dataset'), arch=hp.get('arch'), files={})
    if 'pb' in formats:
        info['files']['pb'] = PB_NAME
    if 'savedmodel' in formats:
        info['files']['savedmodel'] = dict(
            path=SAVEDMODEL_DIR, tags=[tf.saved_model.tag_constants.SERVING],
            signature=tf.saved_model.signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY,
            input_shape=[None] + shape)
    return info


@contextlib.contextmanager
def atomic_folder(path):
    """Yield a temporary folder beside `path`; rename it to `path` only when the block succeeds.

    UserError when `path` exists already: an export is never overwritten or merged.
    """
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise UserError('output folder %s already exists; remove it or pass --out=DIR' % path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, '.%s.tmp-%d' % (os.path.basename(path), os.getpid()))
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.mkdir(tmp)
    try:
        with write_problems_reported(path):
            yield tmp
        if os.path.exists(path):
            raise UserError('output folder %s appeared during the export; nothing written' % path)
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def export(run_dir, out_dir=None, step=None, formats=FORMATS, batch=1, log=print):
    """Export a checkpoint of a run (default: its newest) into `out_dir` (default RUN/export).

    Returns export.json's contents. Nothing is left at `out_dir` or beside it unless every file
    was written.
    """
    if batch < 1:
        raise UserError('--batch=%d: the frozen graph needs a static batch of at least 1' % batch)
    formats = [name for name in FORMATS if name in formats]
    hp = run_hparams(run_dir)
    checkpoint = run_folder.find_checkpoint(run_dir, step)
    out_dir = out_dir or os.path.join(run_dir, 'export')
    info = export_info(hp, run_dir, checkpoint, batch, formats)
    with atomic_folder(out_dir) as tmp:
        try:
            if 'pb' in formats:
                frozen = freeze(hp, checkpoint, batch)
                problems = audit(frozen)
                if problems:
                    raise UserError('the frozen graph is not deployable: %s' % '; '.join(problems))
                write_pb(frozen, os.path.join(tmp, PB_NAME))
            if 'savedmodel' in formats:
                write_savedmodel(freeze(hp, checkpoint, None), os.path.join(tmp, SAVEDMODEL_DIR))
        except tf.errors.OpError as e:  # an unreadable or truncated checkpoint
            if write_problem(e):
                raise  # reported by atomic_folder: the disk, not the checkpoint
            raise UserError('cannot read checkpoint %s: %s; export another step with --ckpt'
                            % (checkpoint, error_text(e)))
        write_text_atomic(os.path.join(tmp, INFO_NAME),
                          json.dumps(info, indent=2, sort_keys=True) + '\n')
    accuracy = info['test_accuracy']
    log('Exported %s (step %d, EMA test accuracy %s) -> %s: %s' % (
        checkpoint, info['step'], '%.2f%%' % accuracy if accuracy is not None else 'unknown',
        out_dir, ', '.join([PB_NAME if name == 'pb' else SAVEDMODEL_DIR + '/' for name in formats]
                           + [INFO_NAME])))
    return info
