"""libml.graph_audit on small hand-made training graphs."""
import numpy as np
import tensorflow.compat.v1 as tf
from tensorflow.python.ops import gen_array_ops

from libml import graph_audit

BATCH = 4


def _images(count=10):
    return np.random.RandomState(0).uniform(-1, 1, [count, 8, 8, 3]).astype(np.float32)


def _batches(dataset, drop_remainder=True):
    batched = dataset.batch(BATCH, drop_remainder=drop_remainder).repeat()
    return tf.data.make_one_shot_iterator(batched).get_next()


def _png_records(folder):
    """A TFRecord file of 10 PNG-encoded 8x8x3 images, read back as a dataset of strings."""
    path = str(folder / 'images.tfrecord')
    with tf.Graph().as_default(), tf.Session() as sess:
        pngs = sess.run(tf.map_fn(tf.image.encode_png, tf.zeros([10, 8, 8, 3], tf.uint8),
                                  dtype=tf.string))
    with tf.io.TFRecordWriter(path) as writer:
        for png in pngs:
            writer.write(png)
    return tf.data.TFRecordDataset(path)


def _step(images, loss_scale=False, wrap=None):
    """A conv + dense classifier step on `images`; returns its train op. `wrap`: a function
    that wraps the Adam optimizer (e.g. in the NPU loss-scale optimizer)."""
    kernel = tf.get_variable('conv', [3, 3, 3, 4])
    dense = tf.get_variable('dense', [4, 2])
    features = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(images, kernel, [1] * 4, 'SAME')), [1, 2])
    loss = tf.reduce_mean(tf.square(tf.matmul(features, dense)))
    optimizer = tf.train.AdamOptimizer(0.01)
    if loss_scale:
        optimizer = tf.train.experimental.MixedPrecisionLossScaleOptimizer(
            optimizer, tf.train.experimental.DynamicLossScale())
    if wrap is not None:
        optimizer = wrap(optimizer)
    return optimizer.minimize(loss, global_step=tf.train.get_or_create_global_step())


def _npu_loss_scaled(optimizer):
    """`optimizer` in the fake adapter's NPULossScaleOptimizer, as libml wraps it."""
    from npu_bridge.npu_init import ExponentialUpdateLossScaleManager, NPULossScaleOptimizer
    manager = ExponentialUpdateLossScaleManager(2 ** 32, 1000, decr_ratio=0.5)
    return NPULossScaleOptimizer(optimizer, manager)


def _audit(build, **kwargs):
    graph = tf.Graph()
    with graph.as_default():
        train_op = build()
    return graph_audit.audit_train_graph(graph, train_op, **kwargs)


def _one_problem(problems, words):
    assert len(problems) == 1, problems
    assert all(word in problems[0] for word in words), problems[0]


def test_static_pipeline_and_step_is_clean():
    def build():
        return _step(_batches(tf.data.Dataset.from_tensor_slices(_images())))
    assert _audit(build) == []


def test_loss_scaled_step_is_clean_when_loss_scale_expected():
    def build():
        return _step(_batches(tf.data.Dataset.from_tensor_slices(_images())), loss_scale=True)
    assert _audit(build, expect_loss_scale=True) == []


def test_npu_loss_scaled_step_with_its_overflow_cond_is_clean(fake_npu):
    def build():
        return _step(_batches(tf.data.Dataset.from_tensor_slices(_images())),
                     wrap=_npu_loss_scaled)
    assert _audit(build, expect_loss_scale=True) == []


def test_missing_loss_scale_is_reported():
    def build():
        return _step(_batches(tf.data.Dataset.from_tensor_slices(_images())))
    _one_problem(_audit(build, expect_loss_scale=True), ['no loss scaling'])


def test_loss_scale_outside_the_step_does_not_count():
    def build():
        tf.Variable(1.0, trainable=False, name='loss_scale')
        return _step(_batches(tf.data.Dataset.from_tensor_slices(_images())))
    _one_problem(_audit(build, expect_loss_scale=True), ['no loss scaling'])


def test_py_func_in_the_step_is_reported():
    def build():
        images = _batches(tf.data.Dataset.from_tensor_slices(_images()))
        doubled = tf.py_func(lambda x: x * 2, [images], tf.float32)
        return _step(tf.reshape(doubled, [BATCH, 8, 8, 3]))
    problems = _audit(build)
    assert 'Python op PyFunc (PyFunc)' in problems[0], problems


def test_py_func_inside_the_input_pipeline_is_reported():
    def build():
        dataset = tf.data.Dataset.from_tensor_slices(_images()).map(
            lambda x: tf.reshape(tf.py_func(lambda a: a, [x], tf.float32), [8, 8, 3]))
        return _step(_batches(dataset))
    _one_problem(_audit(build), ['PyFunc', 'Python op'])


def test_unknown_batch_dimension_is_reported_from_the_iterator_on():
    def build():
        return _step(_batches(tf.data.Dataset.from_tensor_slices(_images()),
                              drop_remainder=False))
    problems = _audit(build)
    _one_problem(problems, ['static shape', 'IteratorGetNext:0 (?, 8, 8, 3)', 'more'])
    assert problems[0].count(':0 (') + problems[0].count(':1 (') <= 10


def test_unknown_batch_placeholder_is_reported():
    def build():
        return _step(tf.placeholder(tf.float32, [None, 8, 8, 3], name='images'))
    _one_problem(_audit(build), ['images:0 (?, 8, 8, 3)'])


def test_string_decoded_after_the_iterator_is_reported(tmp_path):
    def build():
        encoded = _batches(_png_records(tmp_path))
        decoded = tf.map_fn(lambda s: tf.image.decode_png(s, channels=3), encoded,
                            dtype=tf.uint8)
        return _step(tf.reshape(tf.cast(decoded, tf.float32), [BATCH, 8, 8, 3]))
    problems = _audit(build)
    assert any('string tensor' in p and 'IteratorGetNext' in p for p in problems), problems


def test_strings_decoded_in_the_pipeline_are_fine(tmp_path):
    def build():
        decoded = _png_records(tmp_path).map(
            lambda s: tf.cast(tf.image.decode_png(s, channels=3), tf.float32))
        batched = decoded.map(lambda x: tf.reshape(x, [8, 8, 3])).batch(BATCH, True).repeat()
        iterator = tf.data.make_initializable_iterator(batched)  # file name: string in graph
        return _step(iterator.get_next())
    assert _audit(build) == []


def test_while_loop_growing_a_tensor_is_reported():
    def build():
        images = _batches(tf.data.Dataset.from_tensor_slices(_images()))
        _, grown = tf.while_loop(
            lambda i, x: i < 2, lambda i, x: (i + 1, tf.concat([x, x[:1]], 0)), [0, images],
            shape_invariants=[tf.TensorShape([]), tf.TensorShape([None, 8, 8, 3])])
        return _step(grown)
    _one_problem(_audit(build), ['static shape', '(?, 8, 8, 3)'])


def test_shape_arithmetic_on_static_tensors_is_not_reported():
    """Gradient code computes reduction axes from tf.shape: dynamic shape, constant value."""
    def build():
        images = _batches(tf.data.Dataset.from_tensor_slices(_images()))
        bias = tf.get_variable('bias', [3])
        axes, _ = gen_array_ops.broadcast_gradient_args(s0=tf.shape(bias),
                                                        s1=tf.shape(images))
        assert axes.shape.as_list() == [None]  # dynamic shape, value known at compile time
        bias_grad = tf.reshape(tf.reduce_sum(images + bias, axes), tf.shape(bias))
        return _step(images * bias_grad)
    assert _audit(build) == []


def test_train_op_may_be_a_tensor_list_and_every_problem_is_listed():
    graph = tf.Graph()
    with graph.as_default():
        images = tf.placeholder(tf.float32, [None, 8, 8, 3], name='images')
        train_op = _step(images)
        loss = tf.get_default_graph().get_tensor_by_name('Mean_1:0')
    problems = graph_audit.audit_train_graph(graph, [train_op, loss], expect_loss_scale=True)
    assert len(problems) == 2, problems
    assert 'images:0 (?, 8, 8, 3)' in problems[0] and 'no loss scaling' in problems[1]
