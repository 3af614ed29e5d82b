#!/usr/bin/env python
"""RealMix: MixMatch with training signal annealing and out-of-distribution masking.

Nair, Fuentes Alonso, Beltramelli (2019), arXiv:1912.08766; MixMatch: Berthelot et al. (2019).
One training step (DESIGN.md section 4):
  1. guess labels for the K=2 views of each unlabeled image, sharpen with temperature T;
  2. MixUp the stack [labeled, view 1, view 2] with a random permutation of itself;
  3. interleave the three groups so every batch-norm pass sees labeled and unlabeled images;
  4. L_x: cross-entropy on the mixed labeled part, with TSA; L_u: squared error on the mixed
     unlabeled part, with OOD percent masking; total L_x + w_match * ramp * L_u;
  5. Adam step, then EMA of the weights and decoupled weight decay.
"""

import os
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TensorFlow loads: keep C++ logs quiet.

import numpy as np
import tensorflow.compat.v1 as tf
from absl import app, flags

from libml import data, evaluation, inference, layers, models, npu_config, train
from libml.utils import UserError, cli_main, quiet_native_logs

TSA_SCHEDULES = ('none', 'linear_schedule', 'exp_schedule', 'log_schedule')
TSA_RULES = ('reference', 'definition')
METHODS = ('realmix', 'supervised')
AUGMENT_KINDS = ('auto', 'none', 'cifar10', 'svhn', 'stl10', 'color', 'cutout')


# ---------------------------------------------------------------------------------------------
# The algorithm, as plain functions of tensors (unit-tested against numpy in tests/).

def guess_labels(unlabeled_views, classify, temperature):
    """Average the model's predictions over the K views, sharpen; no gradient flows through q."""
    probs = [tf.nn.softmax(classify(view, training=True, update_stats=False))
             for view in unlabeled_views]
    return tf.stop_gradient(layers.sharpen(tf.add_n(probs) / len(probs), temperature))


def tsa_threshold(schedule, progress, nclass):
    """UDA's annealed threshold eta = alpha * (1 - 1/C) + 1/C for progress r in [0, 1]."""
    if schedule == 'linear_schedule':
        alpha = progress
    elif schedule == 'exp_schedule':
        alpha = tf.exp((progress - 1) * 5)
    elif schedule == 'log_schedule':
        alpha = 1 - tf.exp(-progress * 5)
    else:
        raise UserError('unknown --tsa=%s; choose one of: %s' % (schedule, ', '.join(TSA_SCHEDULES)))
    return alpha * (1 - 1. / nclass) + 1. / nclass


def tsa_keep_mask(logits, targets, threshold, rule='reference'):
    """1 for the rows of the mixed labeled batch that TSA still trains, else 0.

    reference:  kept when some class c has p_c * [t_c > 0] < eta * z_c (z: the logits), as the
                reference code does (uizard-technologies/realmix `anneal_sup_loss`);
    definition: kept while some target class c has p_c < t_c * eta, as UDA defines TSA
                (classes with zero target weight never hold a row back).
    """
    probs = tf.nn.softmax(logits)
    if rule == 'reference':
        target_probs = probs * tf.cast(targets > 0, probs.dtype)
        below = tf.reduce_any(target_probs < logits * threshold, axis=1)
        return tf.stop_gradient(tf.cast(below, tf.float32))
    if rule != 'definition':
        raise UserError('unknown --tsa_rule=%s; choose one of: %s' % (rule, ', '.join(TSA_RULES)))
    reached = tf.reduce_all(probs >= targets * threshold, axis=1)
    return tf.stop_gradient(1. - tf.cast(reached, tf.float32))


def supervised_loss(logits, targets, tsa, progress, nclass, rule='reference'):
    """Cross-entropy on (mixed) labeled targets, averaged over the examples TSA keeps."""
    loss = tf.nn.softmax_cross_entropy_with_logits_v2(labels=targets, logits=logits)
    if tsa == 'none':
        return tf.reduce_mean(loss), tf.ones_like(loss)
    keep = tsa_keep_mask(logits, targets, tsa_threshold(tsa, progress, nclass), rule)
    return tf.reduce_sum(loss * keep) / tf.maximum(tf.reduce_sum(keep), 1.), keep


def ood_keep_mask(logits, percent_mask):
    """Keep examples whose top probability is above the floor(N * p)-th smallest top probability."""
    top_prob = tf.stop_gradient(tf.reduce_max(tf.nn.softmax(logits), axis=1))
    count = int(logits.shape[0])
    cut = tf.sort(top_prob)[int(np.floor(count * percent_mask))]
    return tf.cast(top_prob > cut, tf.float32)


def unlabeled_loss(logits, targets, percent_mask):
    """Squared error between mixed guessed targets and predictions; OOD-masked when p > 0."""
    squared_error = tf.square(targets - tf.nn.softmax(logits))
    if percent_mask <= 0:
        return tf.reduce_mean(squared_error), tf.ones([int(logits.shape[0])])
    keep = ood_keep_mask(logits, percent_mask)
    nclass = int(logits.shape[1])
    kept_error = tf.reduce_sum(squared_error * keep[:, None])
    return kept_error / tf.maximum(tf.reduce_sum(keep) * nclass, 1.), keep


def warmup_ramp(images_seen, warmup_kimg):
    """min(1, images_seen / (warmup_kimg * 1024)) for the unlabeled-loss weight."""
    if warmup_kimg <= 0:
        return tf.constant(1.)
    return tf.clip_by_value(tf.cast(images_seen, tf.float32) / (warmup_kimg * 1024.), 0., 1.)


def realmix_terms(labeled_batch, unlabeled_views, classify, hp, images_seen, nclass,
                  mixup=layers.mixup):
    """Steps 1-4 of the algorithm box: every intermediate of one RealMix step, by name."""
    batch = int(labeled_batch['image'].shape[0])
    label_guess = guess_labels(unlabeled_views, classify, hp['T'])
    stack = tf.concat([labeled_batch['image']] + unlabeled_views, 0)
    targets = tf.concat([tf.one_hot(labeled_batch['label'], nclass)]
                        + [label_guess] * len(unlabeled_views), 0)
    mixed_images, mixed_targets, _ = mixup(stack, targets, hp['beta'])
    groups = layers.interleave(tf.split(mixed_images, 1 + len(unlabeled_views)), batch)
    logits = [classify(groups[0], training=True, update_stats=True)]
    logits += [classify(group, training=True, update_stats=False) for group in groups[1:]]
    logits = layers.interleave(logits, batch)
    logits_x, logits_u = logits[0], tf.concat(logits[1:], 0)
    progress = tf.cast(images_seen, tf.float32) / float(hp['total_nimg'])
    loss_x, tsa_keep = supervised_loss(logits_x, mixed_targets[:batch], hp['tsa'], progress, nclass,
                                       hp.get('tsa_rule', 'reference'))
    loss_u, ood_keep = unlabeled_loss(logits_u, mixed_targets[batch:], hp['percent_mask'])
    w_match = hp['w_match'] * warmup_ramp(images_seen, hp['warmup_kimg'])
    return dict(label_guess=label_guess, mixed_targets=mixed_targets, logits_x=logits_x,
                logits_u=logits_u, loss_x=loss_x, loss_u=loss_u, tsa_keep=tsa_keep,
                ood_keep=ood_keep, w_match=w_match)


def realmix_losses(labeled_batch, unlabeled_views, classify, hp, images_seen, nclass):
    """The loss of one RealMix step and the scalars to log."""
    t = realmix_terms(labeled_batch, unlabeled_views, classify, hp, images_seen, nclass)
    # The reference logs the spread of the top predicted probability on the mixed unlabeled rows.
    top_prob_u = tf.reduce_max(tf.nn.softmax(t['logits_u']), axis=1)
    return dict(loss=t['loss_x'] + t['w_match'] * t['loss_u'], xe=t['loss_x'], l2u=t['loss_u'],
                w_match=t['w_match'], mask_ratio=tf.reduce_mean(t['ood_keep']),
                tsa_kept=tf.reduce_mean(t['tsa_keep']), min_unsup_prob=tf.reduce_min(top_prob_u),
                mean_unsup_prob=tf.reduce_mean(top_prob_u), max_unsup_prob=tf.reduce_max(top_prob_u))


def supervised_losses(labeled_batch, classify, nclass):
    """The fully supervised baseline: cross-entropy on the augmented labeled batch only."""
    logits = classify(labeled_batch['image'], training=True, update_stats=True)
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits_v2(
        labels=tf.one_hot(labeled_batch['label'], nclass), logits=logits))
    return dict(loss=loss, xe=loss)


def training_update(losses, hp, step, device):
    """Step 5: Adam and batch-norm statistics, then weight decay, then EMA, then step += batch.

    As in the reference, the EMA averages the trainable weights only; the EMA model reads the raw
    batch-norm moving statistics (averaging them again would double their lag).
    """
    trainable = tf.trainable_variables('classify')
    optimizer = device.wrap_optimizer(tf.train.AdamOptimizer(hp['lr']))
    adam_step = optimizer.minimize(losses['loss'], var_list=trainable,
                                   colocate_gradients_with_ops=True)
    with tf.control_dependencies([adam_step] + tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
        decay = 1 - hp['wd'] * hp['lr']
        weight_decay = [tf.assign(v, v * decay) for v in trainable if v.op.name.endswith('/kernel')]
    ema = tf.train.ExponentialMovingAverage(decay=hp['ema'])
    ema.apply(trainable)  # Creates the shadow variables outside the control dependencies below.
    with tf.control_dependencies(weight_decay):
        ema_update = ema.apply(trainable)
    with tf.control_dependencies([ema_update]):
        train_op = tf.assign_add(step, hp['batch']).op
    return train_op, ema


# ---------------------------------------------------------------------------------------------
# Graph assembly.

def build_graph(hp, shape, nclass, device, pipelines=None):
    """Build the classifier, evaluation towers and (given input pipelines) the train op."""
    classify = models.classifier_from_hp(dict(hp, nclass=nclass))
    step = tf.train.get_or_create_global_step()
    ops = dict(step=step)
    ema = hp['ema']
    if pipelines is not None:
        labeled_batch, unlabeled_batch = pipelines
        if hp['method'] == 'supervised':
            losses = supervised_losses(labeled_batch, classify, nclass)
        else:
            views = tf.unstack(unlabeled_batch['image'], axis=1)
            losses = realmix_losses(labeled_batch, views, classify, hp, step, nclass)
        ops['train_op'], ema = training_update(losses, hp, step, device)
        ops['losses'] = losses
    ops.update(evaluation.evaluation_towers(classify, [hp['eval_batch']] + shape, ema))
    return ops


def hyper_parameters(flag_values, dataset):
    """Every parameter of a run, as saved in args/args.json."""
    hp = {name: flag_values[name].value for name in HP_FLAGS}
    hp['scales'] = hp['scales'] or models.auto_scales(dataset.width)
    hp['augment'] = auto_augment(hp['augment'], dataset.name)
    report_nimg = hp['report_kimg'] << 10
    hp['total_nimg'] = min(hp['train_kimg'] << 10, hp['epochs'] * report_nimg)
    hp.update(dataset=dataset.dataset_id, height=dataset.height, width=dataset.width,
              colors=dataset.colors, nclass=dataset.nclass, class_names=dataset.class_names)
    if hp.get('whiten'):  # measured once and kept in args.json: evaluation and export reuse them
        hp['whiten_stats'] = data.channel_mean_std(dataset)
    return hp


def auto_augment(kind, name):
    """`auto` picks shift-only augmentation for digit sets (no mirror symmetry), else flip+crop."""
    if kind != 'auto':
        return kind
    return 'svhn' if any(k in name for k in ('svhn', 'digits', 'mnist')) else 'cifar10'


# Flags that do not change the trained model: schedule length, evaluation, paths, the device.
# Every other hyperparameter names the run, so two different models never share a folder.
NOT_IN_RUN_NAME = ('dataset', 'train_kimg', 'report_kimg', 'save_kimg', 'keep_ckpt', 'epochs',
                   'tune_kimg', 'eval_batch', 'nclass', 'img_size', 'device', 'total_nimg',
                   'height', 'width', 'colors', 'class_names', 'whiten_stats')
# Flags a method does not read; they stay out of its run name.
UNUSED_BY_METHOD = {'supervised': ('beta', 'w_match', 'warmup_kimg', 'T', 'tsa', 'tsa_rule',
                                   'percent_mask')}


def run_name_keys(hp):
    """The hyperparameters that name a run, sorted."""
    unused = set(NOT_IN_RUN_NAME) | set(UNUSED_BY_METHOD.get(hp['method'], ()))
    return sorted(k for k in hp if k not in unused and k != 'method')


def experiment_name(hp):
    """METHOD_key1value1_key2value2..., from every hyperparameter that changes the trained model."""
    def text(value):
        return '%g' % value if isinstance(value, float) else str(value)
    return '_'.join([hp['method']] + ['%s%s' % (k, text(hp[k])) for k in run_name_keys(hp)])


def check_run_folder(run_dir, hp):
    """UserError when RUN/args/args.json holds a model with other hyperparameters than `hp`."""
    saved = train.read_args(run_dir)
    if saved is None:
        return
    differing = ['--%s=%s here, %s in the run' % (k, hp.get(k), saved.get(k))
                 for k in run_name_keys(dict(saved, **hp)) if saved.get(k) != hp.get(k)]
    if differing:
        raise UserError('%s belongs to another model (%s); use another --train_dir or remove the '
                        'folder' % (run_dir, '; '.join(differing)))


def check_flags(hp):
    if not -1 <= hp['percent_mask'] < 1:
        raise UserError('--percent_mask=%g is outside [-1, 1); use e.g. 0.3 to mask the 30%% least '
                        'confident unlabeled examples, or -1 to turn masking off' % hp['percent_mask'])
    if hp['tsa'] not in TSA_SCHEDULES:
        raise UserError('unknown --tsa=%s; choose one of: %s' % (hp['tsa'], ', '.join(TSA_SCHEDULES)))
    if hp['batch'] < 3:
        raise UserError('--batch=%d is too small: interleaving needs at least one example from '
                        'each of the 3 groups per batch' % hp['batch'])
    for name, ok, rule in FLAG_RANGES:
        if name in hp and not ok(hp[name]):
            raise UserError('--%s=%s is out of range: it must be %s' % (name, hp[name], rule))
    if hp['wd'] * hp['lr'] >= 1:
        raise UserError('--wd=%g with --lr=%g: weight decay multiplies kernels by 1 - wd * lr = %g '
                        'each step; wd * lr must be below 1' % (hp['wd'], hp['lr'],
                                                                1 - hp['wd'] * hp['lr']))


FLAG_RANGES = [
    ('lr', lambda v: v > 0, '> 0'),
    ('wd', lambda v: v >= 0, '>= 0'),
    ('ema', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('bn_momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('beta', lambda v: v > 0, '> 0'),
    ('T', lambda v: v > 0, '> 0'),
    ('w_match', lambda v: v >= 0, '>= 0'),
    ('warmup_kimg', lambda v: v >= 0, '>= 0'),
    ('filters', lambda v: v >= 1, '>= 1'),
    ('repeat', lambda v: v >= 1, '>= 1'),
    ('scales', lambda v: v >= 1, '>= 1 (0 picks it from the image size)'),
    ('train_kimg', lambda v: v > 0, '> 0'),
    ('report_kimg', lambda v: v > 0, '> 0'),
    ('save_kimg', lambda v: v > 0, '> 0'),
    ('epochs', lambda v: v > 0, '> 0'),
    ('keep_ckpt', lambda v: v >= 1, '>= 1'),
    ('tune_kimg', lambda v: v >= 0, '>= 0'),
    ('eval_batch', lambda v: v >= 1, '>= 1'),
]


# ---------------------------------------------------------------------------------------------
# Entry point.

FLAGS = flags.FLAGS
HP_FLAGS = []


def _define(kind, name, default, help_text, **kwargs):
    getattr(flags, 'DEFINE_' + kind)(name, default, help=help_text, **kwargs)
    HP_FLAGS.append(name)


_define('string', 'dataset', 'cifar10.1@250-500', 'Dataset id NAME.SEED@SIZE-VALID under $ML_DATA.')
_define('enum', 'method', 'realmix', 'realmix (MixMatch when --tsa=none and --percent_mask<=0) or '
        'supervised (labeled data only).', enum_values=list(METHODS))
_define('enum', 'arch', 'resnet', 'Network.', enum_values=list(models.ARCHS))
_define('integer', 'filters', 32, 'Filters of the first stage.')
_define('integer', 'repeat', 4, 'Residual blocks per stage.')
_define('integer', 'scales', 0, 'Resolution stages; 0 = log2(width) - 2.')
_define('float', 'bn_momentum', 0.999, 'Momentum of the batch-norm moving averages; short runs '
        '(under ~5,000 steps) need less, e.g. 0.99, for the raw and ema rows to settle.')
_define('bool', 'whiten', False, 'Normalise inputs per channel by the training images\' mean and '
        'standard deviation (the reference\'s --whiten; not applied by its convnet).')
_define('integer', 'batch', 64, 'Labeled (and unlabeled) batch size.')
_define('float', 'lr', 0.002, 'Adam learning rate.')
_define('float', 'wd', 0.02, 'Decoupled weight decay (kernel *= 1 - wd * lr per step).')
_define('float', 'ema', 0.999, 'Decay of the exponential moving average of the weights.')
_define('float', 'beta', 0.75, 'MixUp Beta(beta, beta) parameter.')
_define('float', 'w_match', 75., 'Weight of the unlabeled loss.')
_define('float', 'warmup_kimg', 1024., 'Linear warm-up of w_match, in kimg (1024 labeled images).')
_define('float', 'T', 0.5, 'Sharpening temperature.')
_define('string', 'tsa', 'none', 'Training signal annealing: ' + ', '.join(TSA_SCHEDULES) + '.')
_define('enum', 'tsa_rule', 'reference', 'Which rows TSA keeps: reference (the reference code: '
        'p_c[t_c>0] < eta*logit_c for some c) or definition (UDA: p_c < t_c*eta for some target c).',
        enum_values=list(TSA_RULES))
_define('float', 'percent_mask', -1., 'OOD masking: drop this fraction of the least confident mixed '
        'unlabeled examples from L_u; <= 0 turns it off.')
_define('enum', 'augment', 'auto', 'Input augmentation (auto: svhn-style for digit sets, else cifar10).',
        enum_values=list(AUGMENT_KINDS))
_define('integer', 'train_kimg', 1 << 16, 'Training length in kimg (units of 1024 labeled images).')
_define('integer', 'report_kimg', 64, 'Epoch length in kimg: progress bar and evaluation period.')
_define('integer', 'save_kimg', 64, 'Checkpoint period in kimg.')
_define('integer', 'keep_ckpt', 50, 'Checkpoints kept.')
_define('integer', 'epochs', 700, 'Stop after this many epochs of report_kimg.')
_define('integer', 'tune_kimg', 16, 'Training images (kimg) used to re-estimate batch-norm statistics '
        'for the tuned rows; 0 skips the tuned rows.')
_define('integer', 'eval_batch', 256, 'Batch size of evaluation and inference.')
_define('integer', 'nclass', 0, 'Number of classes; 0 = read from the data.')
_define('integer', 'img_size', 0, 'Image size check; 0 = read from the data.')
_define('enum', 'device', 'auto', 'Where to train.', enum_values=list(npu_config.DEVICES))
_define('enum', 'precision', 'fp32', 'fp32, or mixed (fp16 on NPU/GPU, bfloat16 on CPUs that have it).',
        enum_values=list(npu_config.PRECISIONS))
flags.DEFINE_string('train_dir', './experiments', 'Runs go to TRAIN_DIR/DATASET/EXPERIMENT/.')
flags.DEFINE_string('eval_ckpt', '', 'Evaluate this checkpoint (no training) and write its table.')
flags.DEFINE_string('load_checkpoint', '', 'Fine-tune: start from this checkpoint\'s weights, '
                    'statistics, EMA and Adam state, all but the classifier head (as the reference).')
flags.DEFINE_bool('reset_optimizer', False, 'With --load_checkpoint: start Adam afresh instead.')
flags.DEFINE_bool('perform_inference', False, 'Classify the images of --inference_dir.')
flags.DEFINE_string('inference_dir', '', 'Folder of images (or of class sub-folders).')
flags.DEFINE_string('inference_ckpt', '', 'Checkpoint for inference.')
flags.DEFINE_integer('seed', 0, 'Graph-level random seed; 0 = nondeterministic.')


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s' % ' '.join(argv[1:]))
    device = npu_config.setup(FLAGS.device, FLAGS.precision, log=print)
    if FLAGS.perform_inference:
        inference.run_inference(FLAGS.inference_dir, FLAGS.inference_ckpt, device, build_graph)
        return
    if FLAGS.eval_ckpt:
        evaluate_checkpoint(FLAGS.eval_ckpt, device)
        return
    dataset = data.resolve(FLAGS.dataset, nclass=FLAGS.nclass, image_size=FLAGS.img_size)
    hp = hyper_parameters(FLAGS, dataset)
    check_flags(hp)
    run_dir = os.path.join(FLAGS.train_dir, dataset.dataset_id, experiment_name(hp))
    check_run_folder(run_dir, hp)
    trainer = train.Trainer(run_dir, hp, dataset, device, build_graph, seed=FLAGS.seed)
    trainer.train(load_checkpoint=FLAGS.load_checkpoint, reset_optimizer=FLAGS.reset_optimizer)


def evaluate_checkpoint(checkpoint, device):
    """The table of a checkpoint, with the network its run's args.json describes (not the flags)."""
    path = train.checkpoint_path(checkpoint)
    run_dir, hp = inference.run_args(path)
    for name in ('tune_kimg', 'eval_batch'):  # evaluation settings the command line may change
        if FLAGS[name].present:
            hp[name] = FLAGS[name].value
    dataset = data.resolve(hp['dataset'], nclass=hp['nclass'], image_size=hp['height'])
    train.Trainer(run_dir, hp, dataset, device, build_graph).evaluate_checkpoint(path)


if __name__ == '__main__':
    quiet_native_logs()
    tf.logging.set_verbosity(tf.logging.ERROR)
    warnings.filterwarnings('ignore', message='Seed .* from outer graph')  # --seed covers tf.data too.
    tf.disable_v2_behavior()
    app.run(cli_main(main))
