"""Classify a folder of images with a trained checkpoint; report accuracy for class sub-folders."""

import csv
import os

import numpy as np
import tensorflow.compat.v1 as tf

from libml import data, evaluation, folders, graph, hparams, records, run_folder
from libml.utils import UserError, atomic_output


def run_args(checkpoint):
    """The args.json of the run a checkpoint belongs to (RUN/tf/model.ckpt-N -> RUN/args/args.json)."""
    run_dir = run_folder.run_of_checkpoint(checkpoint)
    hp = run_folder.read_args(run_dir)
    if hp is None:
        raise UserError('%s has no %s, so the network cannot be rebuilt; keep checkpoints inside '
                        'their run folder (RUN/tf/)' % (checkpoint, run_folder.args_path(run_dir)))
    hparams.check_not_renamed(run_dir, hp)
    return run_dir, hp


def collect_images(folder, class_names):
    """(files, labels or None): class sub-folders named after the classes, else the images inside."""
    if not folder or not os.path.isdir(folder):
        raise UserError('--inference_dir %s: no such folder' % folder)
    subfolders = folders.sub_folders(folder)
    if subfolders:
        unknown = [d for d in subfolders if d not in class_names]
        if unknown:
            raise UserError('%s: sub-folders %s are not classes of this model (%s)'
                            % (folder, ', '.join(unknown), ', '.join(class_names)))
        files, local_labels = folders.labeled_files(folder, subfolders)
        labels = np.array([class_names.index(subfolders[i]) for i in local_labels], np.int64)
    else:
        files, labels = folders.image_files(folder), None
    if not files:
        raise UserError('%s holds no PNG or JPEG images' % folder)
    return files, labels


def load_images(files, shape):
    """Decode every file; UserError naming the first one whose size differs from the model's."""
    images = []
    for path in files:
        with open(path, 'rb') as f:
            image = records.decode_image(f.read(), path)
        if list(image.shape) != list(shape):
            raise UserError('%s is %s but the model takes %s images; resize it first'
                            % (path, records.format_shape(image.shape), records.format_shape(shape)))
        images.append(image)
    return np.stack(images)


def run_inference(inference_dir, checkpoint, device):
    """Write {name}_pred.npy (probabilities) and {name}_pred.csv into RUN/inference/."""
    checkpoint = run_folder.checkpoint_path(checkpoint)
    run_dir, hp = run_args(checkpoint)
    shape = [hp['height'], hp['width'], hp['colors']]
    files, labels = collect_images(inference_dir, hp['class_names'])
    images = load_images(files, shape)
    with tf.Graph().as_default():
        ops = graph.build_graph(hp, shape, hp['nclass'], device)
        saver = tf.train.Saver()
        with tf.Session(config=device.session_config()) as session:
            saver.restore(session, checkpoint)
            evaluator = evaluation.Evaluator(session, ops, {}, None, hp['class_names'])
            probs = evaluator.predict(data.to_float(images), 'ema')
    name = os.path.basename(os.path.normpath(inference_dir))
    out_dir = os.path.join(run_dir, 'inference')
    with atomic_output(os.path.join(out_dir, name + '_pred.npy')) as tmp:
        with open(tmp, 'wb') as f:
            np.save(f, probs)
    with atomic_output(os.path.join(out_dir, name + '_pred.csv')) as tmp:
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['file', 'predicted_class', 'confidence'])
            for path, row in zip(files, probs):
                writer.writerow([os.path.relpath(path, inference_dir), hp['class_names'][row.argmax()],
                                 '%.6f' % row.max()])
    print('Classified %d images with %s -> %s' % (len(files), checkpoint,
                                                  os.path.join(out_dir, name + '_pred.{npy,csv}')))
    if labels is not None:
        accuracy = (probs.argmax(1) == labels).mean() * 100
        print('Accuracy on the %d labeled images: %.2f%%' % (len(labels), accuracy))
    return probs
