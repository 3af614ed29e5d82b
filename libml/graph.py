"""The graph of a run: the classifier, a method's train op (Adam, weight decay, EMA), the
evaluation towers. Training, evaluation, inference, export and the benchmark all build it here."""

import contextlib

import tensorflow.compat.v1 as tf

from libml import evaluation, models


def build_graph(hp, shape, nclass, device=None, method=None, pipelines=None, eval_images=None):
    """The classifier's evaluation towers and, given a method and its inputs, the train op.

    `pipelines`: one (labeled_batch, unlabeled_batch or None) per replica this process runs
    (`device.input_shards()`); each replica takes its own step and the device averages the
    gradients. ops['losses'] are averaged over the replicas and, like ops['train_op'], run a step.
    `eval_images` replaces the float placeholder the evaluation towers read (export feeds its
    uint8 input through data.to_float).
    """
    with device.scope() if device is not None else contextlib.nullcontext():
        classify = models.classifier_from_hp(dict(hp, nclass=nclass))
        step = tf.train.get_or_create_global_step()
        ema = tf.train.ExponentialMovingAverage(decay=hp['ema'])
        if eval_images is None:
            eval_images = tf.placeholder(tf.float32, [hp['eval_batch']] + list(shape), 'eval_images')
        # First, outside any replica: the towers create the weights and their moving averages once.
        ops = evaluation.evaluation_towers(classify, eval_images, ema)
        ops['step'] = step
        if pipelines is not None:
            optimizer = device.wrap_optimizer(tf.train.AdamOptimizer(hp['lr']))
            images_per_step = device.global_batch(hp['batch'])

            def replica_step(inputs):
                labeled_batch, unlabeled_batch = inputs
                losses = method.losses(labeled_batch, unlabeled_batch, classify, hp, step, nclass)
                train_op = training_update(device.replica_loss(losses['loss']), hp, step, optimizer,
                                           ema, images_per_step)
                with tf.control_dependencies([train_op]):
                    return dict((name, tf.identity(value)) for name, value in losses.items())

            ops['losses'] = device.replicate(replica_step, pipelines)
            ops['train_op'] = tf.group(*ops['losses'].values())
    return ops


def training_update(loss, hp, step, optimizer, ema, images_per_step):
    """Step 5: Adam and batch-norm statistics, then weight decay, then EMA, then the image counter.

    As in the reference, the EMA averages the trainable weights only; the EMA model reads the raw
    batch-norm moving statistics (averaging them again would double their lag). The counter
    counts images of every replica, so schedules follow the global batch.
    """
    trainable = tf.trainable_variables('classify')
    adam_step = optimizer.minimize(loss, var_list=trainable, colocate_gradients_with_ops=True)
    with tf.control_dependencies([adam_step] + tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
        decay = 1 - hp['wd'] * hp['lr']
        # Kernels (conv and dense weights: rank > 1), not biases or batch-norm scales; by shape,
        # since inside a replica a variable's op name is its copy's (kernel/replica_1).
        decayed = tf.group(*[tf.assign(v, v * decay) for v in trainable if len(v.shape) > 1])
    ema.apply(trainable)  # Creates the shadow variables outside the control dependencies below.
    with tf.control_dependencies([decayed]):
        ema_update = ema.apply(trainable)
    with tf.control_dependencies([ema_update]):
        return tf.assign_add(step, images_per_step).op
