"""The graph of a run: the classifier, a method's train op (Adam, weight decay, EMA), the
evaluation towers. Training, evaluation, inference, export and the benchmark all build it here."""

import tensorflow.compat.v1 as tf

from libml import evaluation, models


def build_graph(hp, shape, nclass, device=None, method=None, pipelines=None, eval_images=None):
    """The classifier's evaluation towers and, given a method and its input pipelines, the train op.

    `pipelines` = (labeled_batch, unlabeled_batch or None); `eval_images` replaces the float
    placeholder the evaluation towers read (export feeds its uint8 input through data.to_float).
    """
    classify = models.classifier_from_hp(dict(hp, nclass=nclass))
    step = tf.train.get_or_create_global_step()
    ops = dict(step=step)
    ema = hp['ema']
    if pipelines is not None:
        labeled_batch, unlabeled_batch = pipelines
        losses = method.losses(labeled_batch, unlabeled_batch, classify, hp, step, nclass)
        ops['train_op'], ema = training_update(losses, hp, step, device)
        ops['losses'] = losses
    if eval_images is None:
        eval_images = tf.placeholder(tf.float32, [hp['eval_batch']] + list(shape), 'eval_images')
    ops.update(evaluation.evaluation_towers(classify, eval_images, ema))
    return ops


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
