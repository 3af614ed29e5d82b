"""Network layers built from tf.get_variable and tf.nn, plus the MixMatch batch helpers.

Layer and variable names follow tf.layers' conventions (`conv2d_3/kernel`,
`batch_normalization_7/moving_mean`, `dense/bias`) so checkpoints of the reference code load.
"""

import collections

import tensorflow.compat.v1 as tf

# Per batch-norm layer in training mode: (moving_mean, moving_variance, batch_mean, batch_variance).
# Read by the evaluation's "tuned" pass to re-estimate statistics without touching training state.
BN_MOMENTS = 'realmix_bn_batch_moments'
# Per batch-norm call that updates the statistics: (moving variable, batch value, momentum), the
# mean's and the variance's. The train step applies them (`moving_average_update`) once the batch
# values are averaged over the workers.
BN_UPDATES = 'realmix_bn_statistics_updates'


class LayerNamer(object):
    """Gives tf.layers-style unique names (`conv2d`, `conv2d_1`, ...) within one network call."""

    def __init__(self):
        self.counts = collections.Counter()

    def __call__(self, base):
        index = self.counts[base]
        self.counts[base] += 1
        return base if index == 0 else '%s_%d' % (base, index)


def variable(name, shape, initializer, trainable=True):
    """tf.get_variable whose replica copies average their updates under a distribution strategy
    (batch-norm statistics, weight decay); the same variable without one."""
    return tf.get_variable(name, shape, initializer=initializer, trainable=trainable,
                           aggregation=tf.VariableAggregation.MEAN)


def conv2d(x, filters, kernel_size, name, stride=1, use_bias=True, initializer=None):
    """Same-padded 2-D convolution; kernel ~ N(0, 1/(0.5 k^2 f)) (He-like) unless `initializer`."""
    channels = int(x.shape[-1])
    if initializer is None:
        stddev = (0.5 * kernel_size * kernel_size * filters) ** -0.5
        initializer = tf.random_normal_initializer(stddev=stddev)
    with tf.variable_scope(name):
        kernel = variable('kernel', [kernel_size, kernel_size, channels, filters], initializer)
        y = tf.nn.conv2d(x, kernel, strides=[1, stride, stride, 1], padding='SAME')
        if not use_bias:
            return y
        bias = variable('bias', [filters], tf.zeros_initializer())
        return tf.nn.bias_add(y, bias)


def dense(x, units, name):
    """Fully connected layer with Glorot-normal kernel and zero bias."""
    with tf.variable_scope(name):
        kernel = variable('kernel', [int(x.shape[-1]), units], tf.glorot_normal_initializer())
        bias = variable('bias', [units], tf.zeros_initializer())
        return tf.nn.bias_add(tf.matmul(x, kernel), bias)


def batch_norm(x, training, name, update_stats=True, momentum=0.999, epsilon=1e-3):
    """Batch normalisation of an NHWC tensor (fused kernel: about twice as fast on CPU).

    In training mode it normalises with the batch moments and, when `update_stats`, adds the
    moving-average updates to BN_UPDATES; in inference mode it uses the moving averages.
    """
    channels = int(x.shape[-1])
    with tf.variable_scope(name):
        gamma = variable('gamma', [channels], tf.ones_initializer())
        beta = variable('beta', [channels], tf.zeros_initializer())
        moving_mean = variable('moving_mean', [channels], tf.zeros_initializer(), trainable=False)
        moving_variance = variable('moving_variance', [channels], tf.ones_initializer(),
                                   trainable=False)
        if not training:
            y, _, _ = tf.nn.fused_batch_norm(x, gamma, beta, mean=moving_mean,
                                             variance=moving_variance, epsilon=epsilon,
                                             is_training=False)
            return y
        y, mean, variance = tf.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon, is_training=True)
        tf.add_to_collection(BN_MOMENTS, (moving_mean, moving_variance, mean, variance))
        if update_stats:
            for moving, value in ((moving_mean, mean), (moving_variance, variance)):
                tf.add_to_collection(BN_UPDATES, (moving, value, momentum))
        return y


def moving_average_update(moving, value, momentum):
    """The op moving a batch-norm statistic towards `value` (one entry of BN_UPDATES)."""
    return tf.assign_sub(moving, (moving - value) * (1 - momentum))


def shake_shake(a, b, training):
    """Mix two branches with a per-example uniform weight in training, their mean otherwise.

    As the MixMatch code: the same weight serves the forward and the backward pass.
    """
    if not training:
        return 0.5 * (a + b)
    mu = tf.random.uniform([tf.shape(a)[0]] + [1] * (len(a.shape) - 1), 0, 1)
    return a + mu * (b - a)


def leaky_relu(x, alpha=0.1):
    """Leaky ReLU (the networks' slope 0.1); its gradient follows `bfloat16_gradients` scopes."""
    return tf.nn.leaky_relu(x, alpha=alpha)


# Gradient name for the LeakyRelu ops made inside `bfloat16_gradients()`.
LEAKY_RELU_COMPILED_GRADIENT = 'RealmixLeakyReluGradByXla'


@tf.RegisterGradient(LEAKY_RELU_COMPILED_GRADIENT)
def _leaky_relu_compiled_gradient(op, grad):
    """LeakyReluGrad itself, compiled by XLA: the same op and values, with the vectorised
    bfloat16 code XLA generates where TensorFlow's CPU kernel converts element by element."""
    with tf.xla.experimental.jit_scope():
        return tf.raw_ops.LeakyReluGrad(gradients=grad, features=op.inputs[0],
                                        alpha=op.get_attr('alpha'))


def bfloat16_gradients(graph=None):
    """Scope whose LeakyRelu ops take their gradient compiled by XLA: oneDNN CPUs in bfloat16
    (where LeakyReluGrad's kernel is 10-20x slower than in float32); elsewhere it stays as is."""
    graph = graph or tf.get_default_graph()
    return graph.gradient_override_map({'LeakyRelu': LEAKY_RELU_COMPILED_GRADIENT})


def sharpen(p, temperature):
    """Lower the entropy of each row of distributions p: p^(1/T), renormalised."""
    p = tf.pow(p, 1. / temperature)
    return p / tf.reduce_sum(p, axis=1, keepdims=True)


def sample_beta(alpha, shape):
    """Beta(alpha, alpha) samples from two Gamma draws (tf.distributions is gone from TF 2.x);
    every MixUp coefficient is drawn here, so tests replace it to fix the draw."""
    a = tf.random.gamma(shape, alpha)
    b = tf.random.gamma(shape, alpha)
    return a / (a + b)


def mixup(images, targets, beta):
    """MixUp every example with a random partner of the same stack, weight max(lam, 1-lam) >= 0.5.

    Returns the mixed images, mixed targets and the per-example weights lam' used.
    """
    count = int(images.shape[0])
    lam = sample_beta(beta, [count])
    lam = tf.maximum(lam, 1 - lam)
    return mix_with(images, targets, lam, random_permutation(count))


def random_permutation(count):
    """A random order of 0..count-1 (MixUp partners); tests replace it to fix the draw."""
    return tf.random.shuffle(tf.range(count))


def random_normal(shape):
    """Standard normal noise (VAT's first direction); tests replace it to fix the draw."""
    return tf.random.normal(shape)


def mix_with_reverse(images, targets, lam):
    """MixUp of each example with the one at the mirrored position of the batch, weights lam [N]."""
    return mix_with(images, targets, lam, tf.range(int(images.shape[0]) - 1, -1, -1))


def mix_with(images, targets, lam, partner):
    """MixUp with given weights lam [N] and partner indices [N]: (images, targets, lam)."""
    lam_images = tf.reshape(lam, [-1] + [1] * (len(images.shape) - 1))
    mixed_images = images * lam_images + tf.gather(images, partner) * (1 - lam_images)
    mixed_targets = targets * lam[:, None] + tf.gather(targets, partner) * (1 - lam[:, None])
    return mixed_images, mixed_targets, lam


def interleave_offsets(batch, groups):
    """Slice boundaries splitting `batch` rows into `groups` near-equal parts (extras go last)."""
    sizes = [batch // groups] * groups
    for i in range(batch - sum(sizes)):
        sizes[-i - 1] += 1
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    return offsets


def interleave(batches, batch):
    """Swap slice i of batch 0 with slice i of batch i, so every batch mixes all sources.

    Applying it twice restores the original order (the swap is its own inverse).
    """
    offsets = interleave_offsets(batch, len(batches))
    parts = [[v[offsets[p]:offsets[p + 1]] for p in range(len(batches))] for v in batches]
    for i in range(1, len(batches)):
        parts[0][i], parts[i][i] = parts[i][i], parts[0][i]
    return [tf.concat(p, axis=0) for p in parts]
