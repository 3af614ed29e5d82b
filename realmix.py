#!/usr/bin/env python
"""Train, evaluate or apply a semi-supervised classifier: RealMix (the default), MixMatch, or a
baseline, chosen with --method (methods/). The seed's command:

    python realmix.py --dataset=cifar10.1@250-500 --tsa=linear_schedule --percent_mask=0.3

RealMix (Nair et al. 2019, arXiv:1912.08766) is MixMatch plus training signal annealing and
out-of-distribution masking; its step is in methods/realmix.py, the rest of the graph in
libml/graph.py, the loop in libml/train.py.
"""

import os
import warnings

import libml  # noqa: F401  (first: it sets TensorFlow's environment before TF loads)

import tensorflow.compat.v1 as tf
from absl import app, flags

import methods
from libml import data, hparams, inference, npu_config, run_folder, train
from libml.utils import UserError, cli_main, quiet_native_logs

FLAGS = flags.FLAGS
flags.DEFINE_enum('method', 'realmix', methods.names(), 'The training method, one module of '
                  'methods/ each (realmix is MixMatch when --tsa=none and --percent_mask<=0).')
hparams.define_flags(flags, hparams.COMMON_FLAGS + methods.all_flags())
flags.adopt_module_key_flags(hparams)  # so --help lists them beside the flags below
flags.DEFINE_string('train_dir', './experiments', 'Runs go to TRAIN_DIR/DATASET/EXPERIMENT/.')
flags.DEFINE_string('eval_ckpt', '', 'Evaluate this checkpoint (no training) and write its table.')
flags.DEFINE_string('load_checkpoint', '', 'Fine-tune: start from this checkpoint\'s weights, '
                    'statistics, EMA and optimizer state, all but the classifier head (as the reference).')
flags.DEFINE_bool('reset_optimizer', False, 'With --load_checkpoint: start the optimizer (Adam, momentum) afresh instead.')
flags.DEFINE_bool('perform_inference', False, 'Classify the images of --inference_dir.')
flags.DEFINE_string('inference_dir', '', 'Folder of images (or of class sub-folders).')
flags.DEFINE_string('inference_ckpt', '', 'Checkpoint for inference.')
flags.DEFINE_integer('seed', 0, 'Graph-level random seed; 0 = nondeterministic.')


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    if FLAGS.perform_inference or FLAGS.eval_ckpt:  # one process, one replica: no cluster
        device = npu_config.setup(FLAGS.device, FLAGS.precision, log=print, environ={})
        if FLAGS.perform_inference:
            inference.run_inference(FLAGS.inference_dir, FLAGS.inference_ckpt, device)
        else:
            evaluate_checkpoint(FLAGS.eval_ckpt, device)
        return
    device = npu_config.setup(FLAGS.device, FLAGS.precision, log=print, replicas=FLAGS.replicas,
                              iterations_per_loop=FLAGS.iterations_per_loop)
    method = methods.get(FLAGS.method)
    specs = methods.flag_specs(FLAGS.method)
    dataset = data.resolve(FLAGS.dataset, nclass=FLAGS.nclass, image_size=FLAGS.img_size)
    hp = hparams.from_flags(FLAGS, FLAGS.method, specs, dataset, device.cluster.replicas)
    run_dir = os.path.join(FLAGS.train_dir, dataset.dataset_id, hparams.experiment_name(hp))
    hparams.check_run_folder(run_dir, hp)
    trainer = train.Trainer(run_dir, hp, dataset, device, method, seed=FLAGS.seed)
    trainer.train(load_checkpoint=FLAGS.load_checkpoint, reset_optimizer=FLAGS.reset_optimizer)


def evaluate_checkpoint(checkpoint, device):
    """The table of a checkpoint, with the network its run's args.json describes (not the flags)."""
    path = run_folder.checkpoint_path(checkpoint)
    run_dir, hp = inference.run_args(path)
    for name in ('tune_kimg', 'eval_batch'):  # evaluation settings the command line may change
        if FLAGS[name].present:
            hp[name] = FLAGS[name].value
    dataset = data.resolve(hp['dataset'], nclass=hp['nclass'], image_size=hp['height'])
    trainer = train.Trainer(run_dir, hp, dataset, device, methods.get(hp['method']))
    trainer.evaluate_checkpoint(path)


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    warnings.filterwarnings('ignore', message='Seed .* from outer graph')  # --seed covers tf.data too.
    tf.disable_v2_behavior()
    app.run(cli_main(main))
