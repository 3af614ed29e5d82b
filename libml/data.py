"""A dataset id resolved to its files, shape and classes; the tf.data input pipelines of the trainer."""

import collections
import os

import numpy as np
import tensorflow.compat.v1 as tf

from libml import augment, names, randaugment, records
from libml.utils import UserError, ml_data_dir

K_UNLABELED_VIEWS = 2
ITERATOR_INITIALIZERS = 'realmix_iterator_initializers'  # run once the session starts


class SSLDataset(collections.namedtuple('SSLDataset', [
        'dataset_id', 'name', 'seed', 'size', 'valid', 'label_file', 'unlabel_file', 'test_file',
        'height', 'width', 'colors', 'nclass', 'class_names'])):
    """A resolved dataset id: its files, image shape and classes."""

    @property
    def shape(self):
        return [self.height, self.width, self.colors]


def _require(path, how):
    if not os.path.isfile(path):
        raise UserError('missing %s; create it with: %s' % (path, how))


def resolve(dataset_id, root=None, nclass=0, image_size=0):
    """Find the split, test and class-mapping files of a dataset id and read shape and classes."""
    root = root or ml_data_dir()
    name, seed, size, valid = names.parse_dataset_id(dataset_id)
    split = names.split_files(name, seed, size, root)
    test_file = names.dataset_path(name, 'test', root)
    split_cmd = ('python scripts/create_split.py --seed=%d --label_split_size=%d %s %s'
                 % (seed, size, os.path.join(root, 'SSL', name), names.dataset_path(name, 'train', root)))
    _require(test_file, 'python scripts/create_datasets.py %s (or custom --name=%s ...)' % (name, name))
    _require(split['label'], split_cmd)
    _require(split['unlabel'], split_cmd)
    height, width, colors = _first_image_shape(split['label'])
    if image_size and image_size != height:
        raise UserError('--img_size=%d but %s holds %dx%d images' % (image_size, split['label'],
                                                                     height, width))
    class_names = _class_names(root, name, [split['label'], test_file])
    if nclass and nclass < len(class_names):
        raise UserError('--nclass=%d but the data has %d classes' % (nclass, len(class_names)))
    if nclass:
        class_names = class_names + [str(i) for i in range(len(class_names), nclass)]
    return SSLDataset(dataset_id, name, seed, size, valid, split['label'], split['unlabel'],
                      test_file, height, width, colors,
                      len(class_names), class_names)


def _first_image_shape(path):
    for _, image, _ in records.read_records(path):
        return records.decode_image(image).shape
    raise UserError('%s holds no records; recreate the split' % path)


def _class_names(root, name, label_files):
    """Class names from {name}_class_mappings.json, else '0'..'C-1' from the largest label seen."""
    mapping = names.class_mappings_path(name, root)
    if os.path.isfile(mapping):
        return records.read_class_mappings(mapping)
    top = max(label for path in label_files for _, _, label in records.read_records(path))
    return [str(i) for i in range(top + 1)]


def _parse(serialized, shape):
    features = tf.parse_single_example(serialized, features={
        'image': tf.FixedLenFeature([], tf.string),
        'label': tf.FixedLenFeature([], tf.int64)})
    image = tf.image.decode_png(features['image'], channels=shape[2])
    image.set_shape(shape)
    return image, features['label']


def to_float(images):
    """uint8 pixels -> float32 in the network's [-1, 1] range; numpy stays numpy, tensors tensors."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) * (2. / 255) - 1
    return tf.cast(images, tf.float32) * (2. / 255) - 1


def to_uint8(images):
    """The inverse of to_float for tensors: [-1, 1] floats -> rounded uint8 pixels."""
    return tf.saturate_cast(tf.round((images + 1) * (255. / 2)), tf.uint8)


def _decoded(path, shape, skip=0, shard=(0, 1)):
    """(image, label, index) of a file's records from `skip` on, `index` counted from there, for
    this replica's shard (every count-th from its index); decoded to uint8 once, cached in memory."""
    index, count = shard
    records_ds = tf.data.TFRecordDataset(path).skip(skip)
    ds = tf.data.Dataset.zip((records_ds, tf.data.Dataset.range(np.iinfo(np.int64).max)))
    ds = ds.shard(count, index)
    return ds.map(lambda s, i: _parse(s, shape) + (i,), num_parallel_calls=2).cache()


def unlabeled_size(data):
    """How many unlabeled records follow the validation ones: the range of the pipeline's `index`."""
    return max(0, sum(1 for _ in records.read_serialized(data.unlabel_file)) - data.valid)


def check_shards(data, replicas):
    """UserError when a split is too small to give every replica its own labeled examples."""
    if data.size < replicas:
        raise UserError('%d labeled images cannot be shared out to %d replicas; use fewer '
                        'replicas' % (data.size, replicas))


def labeled_pipeline(data, batch, augment_kind, shuffle_buffer=None, shard=(0, 1)):
    """Endless augmented labeled batches: dict(image=[B,H,W,C] float, label=[B] int64)."""
    augment_fn = augment.get(augment_kind)
    ds = _decoded(data.label_file, data.shape, shard=shard)
    ds = ds.shuffle(shuffle_buffer or -(-data.size // shard[1])).repeat()
    ds = ds.map(lambda image, label, _: dict(image=augment_fn(to_float(image)), label=label),
                num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True).prefetch(4)


def unlabeled_pipeline(data, batch, augment_kind, shuffle_buffer=50000, shard=(0, 1),
                       views=('weak',) * K_UNLABELED_VIEWS):
    """Endless unlabeled batches: dict(image=[B,K,H,W,C], index=[B] int64), the K `views` of each
    image ('weak': `augment_kind`; 'strong': RandAugment and Cutout after another weak draw) and its
    position in the unlabeled set (after the validation records)."""
    augment_fn = augment.get(augment_kind)

    def weak_views(image, label, index):
        del label
        image = to_float(image)
        return dict(image=tf.stack([augment_fn(image) for _ in views]), index=index)

    def strengthen(batch_views):
        # After .batch(): RandAugment on a whole batch is 4-5x faster than image by image.
        image = tf.unstack(batch_views['image'], axis=1)
        image = [randaugment.strong_views(to_uint8(view)) if kind == 'strong' else view
                 for kind, view in zip(views, image)]
        return dict(image=tf.stack(image, axis=1), index=batch_views['index'])

    ds = _decoded(data.unlabel_file, data.shape, skip=data.valid, shard=shard)
    ds = ds.shuffle(shuffle_buffer).repeat()
    ds = ds.map(weak_views, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    ds = ds.batch(batch, drop_remainder=True)
    if 'strong' in views:
        ds = ds.map(strengthen, num_parallel_calls=tf.data.experimental.AUTOTUNE)
    return ds.prefetch(4)


def batches(dataset, initializable=False):
    """The next-batch tensors of a dataset, read directly by the train op: from a one-shot
    iterator, or an initializable one (initializer in ITERATOR_INITIALIZERS) for the NPU loop."""
    if not initializable:
        return tf.data.make_one_shot_iterator(dataset).get_next()
    iterator = tf.data.make_initializable_iterator(dataset)
    tf.add_to_collection(ITERATOR_INITIALIZERS, iterator.initializer)
    return iterator.get_next()


def load_eval_sets(data):
    """The labeled, validation and test sets as uint8 arrays, decoded once for every evaluation."""
    labeled = records.load_arrays(data.label_file)
    test = records.load_arrays(data.test_file)
    valid = _take_valid(data)
    return collections.OrderedDict([('labeled', labeled), ('valid', valid), ('test', test)])


def _take_valid(data):
    """The first `valid` unlabeled records (with their true labels) as the validation set."""
    images, labels = [], []
    for index, image, label in records.read_records(data.unlabel_file):
        if index >= data.valid:
            break
        if label < 0:
            raise UserError('%s record %d has no label, so it cannot serve as validation; use -0 '
                            'as the validation size' % (data.unlabel_file, index))
        images.append(records.decode_image(image))
        labels.append(label)
    if len(images) < data.valid:
        raise UserError('validation size %d exceeds the %d unlabeled records of %s'
                        % (data.valid, len(images), data.unlabel_file))
    if not images:
        return np.zeros([0] + data.shape, np.uint8), np.zeros([0], np.int64)
    return np.stack(images), np.array(labels, np.int64)


def channel_mean_std(data):
    """Per-channel mean and standard deviation of the training images (labeled, then unlabeled
    after the validation records) in the network's [-1, 1] range, for --whiten."""
    total, total_sq, count = 0., 0., 0
    for path, skip in ((data.label_file, 0), (data.unlabel_file, data.valid)):
        for index, image, _ in records.read_records(path):
            if index >= skip:
                pixels = to_float(records.decode_image(image)).reshape(-1, data.shape[-1])
                total = total + pixels.astype(np.float64).sum(0)
                total_sq = total_sq + (pixels.astype(np.float64) ** 2).sum(0)
                count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std]


def load_tune_images(data, count):
    """Up to `count` un-augmented training images (labeled first, then unlabeled after the
    validation records) for re-estimating batch-norm statistics; None when count is 0."""
    if count <= 0:
        return None
    images = []
    for path, skip in ((data.label_file, 0), (data.unlabel_file, data.valid)):
        for index, image, _ in records.read_records(path):
            if len(images) >= count:
                break
            if index >= skip:
                images.append(records.decode_image(image))
    return np.stack(images)
