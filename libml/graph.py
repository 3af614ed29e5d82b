"""The graph of a run: the classifier, a method's train op (Adam, weight decay, EMA), the
evaluation towers. Training, evaluation, inference, export and the benchmark all build it here."""

import contextlib

import tensorflow.compat.v1 as tf

import methods  # the method interface's defaults (read when a step is built)
from libml import evaluation, layers, models


def build_graph(hp, shape, nclass, device=None, method=None, pipelines=None, eval_images=None):
    """The classifier's evaluation towers and, given a method and its inputs, the train op.

    `pipelines`: one (labeled_batch, unlabeled_batch or None) per replica this process runs
    (`device.input_shards()`); each replica takes its own step and the device averages the
    gradients. ops['losses'] are averaged over every replica of every process (HCCL ranks too) and,
    like ops['train_op'], run a step; ops['step_after_update'] is the image counter after it, and
    ops['stop_vote'] > 0 when any process set its ops['stop_request'] to 1.
    `eval_images` replaces the float placeholder the evaluation towers read (export feeds its
    uint8 input through data.to_float).
    """
    stop_request = stop_request_variable() if pipelines is not None else None
    with device.scope() if device is not None else contextlib.nullcontext():
        classify = models.classifier_from_hp(dict(hp, nclass=nclass))
        step = tf.train.get_or_create_global_step()
        ema = tf.train.ExponentialMovingAverage(decay=hp['ema'])
        if eval_images is None:
            eval_images = tf.placeholder(tf.float32, [hp['eval_batch']] + list(shape), 'eval_images')
        # First, outside any replica: the towers create the weights and their moving averages once.
        ops = evaluation.evaluation_towers(classify, eval_images, ema)
        ops['step'] = step
        ops['stop_request'] = stop_request
        if pipelines is not None:
            optimizer = device.wrap_optimizer(methods.optimizer(method, hp, step))
            decoupled_decay = methods.decoupled_weight_decay(method)
            images_per_step = device.global_batch(hp['batch'])

            def replica_step(inputs):
                labeled_batch, unlabeled_batch = inputs
                student = models.with_teacher(classify, evaluation.ema_getter(ema))
                first = len(tf.get_collection(layers.BN_UPDATES))
                losses = methods.losses(method, labeled_batch, unlabeled_batch, student, hp, step,
                                        nclass, device.sum_over_replicas)
                statistics = tf.get_collection(layers.BN_UPDATES)[first:]  # this replica's
                state_update = losses.pop('state_update', None)
                losses[STOP_VOTE] = stop_request.read_value()
                train_op, losses = training_update(
                    device.replica_loss(losses['loss']), hp, step, optimizer, ema, images_per_step,
                    statistics, device, scalars=losses, decoupled_decay=decoupled_decay)
                if state_update is not None:
                    train_op = tf.group(train_op, state_update)
                with tf.control_dependencies([train_op]):
                    return dict((name, tf.identity(value)) for name, value in losses.items())

            scalars = device.replicate(replica_step, pipelines)
            ops['train_op'] = tf.group(*scalars.values())
            ops['stop_vote'] = scalars.pop(STOP_VOTE)
            ops['losses'] = scalars
            with tf.control_dependencies([ops['train_op']]):
                # Read after every replica's update: the images counted once the step is done
                # (fetched beside the train op, the variable may be read before its increment).
                ops['step_after_update'] = tf.identity(step)
    return ops


STOP_VOTE = 'stop_vote'  # reduced with the losses: > 0 once any rank asked to stop


def stop_request_variable():
    """A float each process sets to 1 when asked to stop; built outside any strategy's scope
    (each process has its own) and left out of checkpoints (see `saved_variables`)."""
    return tf.Variable(0., trainable=False, name='stop_request')


def saved_variables():
    """What a run's checkpoints hold: every global variable but the stop request."""
    return [v for v in tf.global_variables() if v.op.name != 'stop_request']


def training_update(loss, hp, step, optimizer, ema, images_per_step, statistics=(), device=None,
                    scalars=None, decoupled_decay=True):
    """Step 5: the optimizer (Adam) and batch-norm statistics, then weight decay (unless the loss
    holds it: `decoupled_decay` False), then EMA, then the image counter; returns (that op,
    `scalars` as the workers share them).

    `statistics`: the BN_UPDATES entries of this replica's forward passes. Workers average the
    gradients, the batch moments and the logged `scalars` ({name: scalar}), all in one collective;
    the rest is the same on every worker and stays local. As in the reference, the EMA averages
    the trainable weights only; the EMA model reads the raw batch-norm moving statistics (averaging
    them again would double their lag). The counter counts images of every replica, so schedules
    follow the global batch.
    """
    trainable = tf.trainable_variables('classify')
    grads_and_vars = [(g, v) for g, v in optimizer.compute_gradients(
        loss, var_list=trainable, colocate_gradients_with_ops=True) if g is not None]
    names = sorted(scalars or {})
    shared = ([g for g, _ in grads_and_vars] + [value for _, value, _ in statistics]
              + [scalars[name] for name in names])
    if device is not None:
        shared = device.mean_over_workers(shared)
    moments_end = len(grads_and_vars) + len(statistics)
    grads, moments = shared[:len(grads_and_vars)], shared[len(grads_and_vars):moments_end]
    shared_scalars = dict(zip(names, shared[moments_end:]))
    optimizer_step = optimizer.apply_gradients(list(zip(grads, [v for _, v in grads_and_vars])))
    statistics_update = [layers.moving_average_update(moving, moment, momentum)
                         for (moving, _, momentum), moment in zip(statistics, moments)]
    with tf.control_dependencies([optimizer_step] + statistics_update):
        decay = 1 - hp['wd'] * hp['lr']
        # Kernels (conv and dense weights: rank > 1), not biases or batch-norm scales; by shape,
        # since inside a replica a variable's op name is its copy's (kernel/replica_1).
        decayed = tf.group(*[tf.assign(v, v * decay) for v in trainable
                             if len(v.shape) > 1 and decoupled_decay])
    ema.apply(trainable)  # Creates the shadow variables outside the control dependencies below.
    with tf.control_dependencies([decayed]):
        ema_update = ema.apply(trainable)
    with tf.control_dependencies([ema_update]):
        return tf.assign_add(step, images_per_step).op, shared_scalars
