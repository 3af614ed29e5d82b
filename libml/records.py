"""TFRecord I/O for the project's datasets: PNG images and int64 labels in tf.train.Example."""

import contextlib
import io
import json
import os

import numpy as np
from PIL import Image
import tensorflow.compat.v1 as tf

from libml import names
from libml.utils import UserError, atomic_output

UNLABELED = -1

# PIL modes we accept: grayscale ones become L, colour ones RGB (alpha dropped, palettes expanded).
_GRAY_MODES = ('1', 'L', 'LA')
_COLOR_MODES = ('RGB', 'RGBA', 'P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV')


def encode_png(image):
    """PNG bytes of a uint8 HxWxC image, C = 1 or 3."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG')
    return buf.getvalue()


def _pil_open(data, name):
    """A PIL image converted to L or RGB; UserError naming `name` when it cannot be read."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:  # PIL raises many types for bad data
        raise UserError('%s: cannot decode image (%s)' % (name, e))
    if image.mode in _GRAY_MODES:
        return image if image.mode == 'L' else image.convert('L')
    if image.mode in _COLOR_MODES:
        return image if image.mode == 'RGB' else image.convert('RGB')
    raise UserError('%s: unsupported pixel mode %s; use 8-bit grayscale or RGB images'
                    % (name, image.mode))


def decode_image(data, name='image'):
    """A uint8 HxWxC array (C = 1 for grayscale, 3 for colour) from PNG/JPEG bytes."""
    array = np.asarray(_pil_open(data, name), dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def image_shape(data, name='image'):
    """(H, W, C) from an image header, without decoding the pixels."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as e:
        raise UserError('%s: cannot decode image (%s)' % (name, e))
    width, height = image.size
    return height, width, (1 if image.mode in _GRAY_MODES else 3)


def format_shape(shape):
    """'32x32x3' for (32, 32, 3)."""
    return 'x'.join(str(d) for d in shape)


def make_example(png, label):
    """A serialized tf.train.Example with features `image` (bytes) and `label` (int64)."""
    feature = {
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized, where='record'):
    """(png bytes, label) of a serialized Example; UserError naming `where` when malformed."""
    try:
        feature = tf.train.Example.FromString(serialized).features.feature
        return feature['image'].bytes_list.value[0], int(feature['label'].int64_list.value[0])
    except Exception as e:
        raise UserError('%s: not an image/label tf.train.Example (%s: %s)'
                        % (where, type(e).__name__, e))


def write_serialized(path, serialized_examples):
    """Write serialized records to `path` as is (not atomic: pass a temp name); return the count."""
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for record in serialized_examples:
            writer.write(record)
            count += 1
    return count


def write_records(path, serialized_examples):
    """Write serialized records atomically to `path`; return how many were written."""
    with atomic_output(path) as tmp:
        return write_serialized(tmp, serialized_examples)


@contextlib.contextmanager
def atomic_outputs(paths):
    """Temporary names for several files; all are renamed into place only if the block succeeds."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_output(path)) for path in paths]


def read_serialized(path):
    """Yield (index, serialized record) of a TFRecord file; UserError on a missing/corrupt file."""
    if not os.path.isfile(path):
        raise UserError('%s: no such TFRecord file' % path)
    index = 0
    try:
        for record in tf.io.tf_record_iterator(path):
            yield index, record
            index += 1
    except tf.errors.OpError as e:
        raise UserError('%s: corrupt or truncated at record %d (%s); recreate the file'
                        % (path, index, e.message.strip()))


def read_records(path):
    """Yield (index, png bytes, label) for every record of a TFRecord file."""
    for index, record in read_serialized(path):
        png, label = parse_example(record, '%s record %d' % (path, index))
        yield index, png, label


def load_arrays(path):
    """All images (uint8 [N,H,W,C]) and labels (int64 [N]) of a TFRecord file."""
    images, labels = [], []
    for index, png, label in read_records(path):
        where = '%s record %d' % (path, index)
        image = decode_image(png, where)
        if images and image.shape != images[0].shape:
            raise UserError('%s: image shape %s differs from record 0 shape %s'
                            % (where, format_shape(image.shape), format_shape(images[0].shape)))
        images.append(image)
        labels.append(label)
    if not images:
        raise UserError('%s: holds no records' % path)
    return np.stack(images), np.array(labels, dtype=np.int64)


def write_arrays(path, images, labels):
    """Write uint8 [N,H,W,C] images and their labels atomically (the inverse of load_arrays)."""
    return write_records(path, (make_example(encode_png(image), label)
                                for image, label in zip(images, labels)))


def mappings_beside(path):
    """Class names from the {name}_class_mappings.json that belongs to a record file, or None."""
    folder, name = names.record_file_dataset(path)
    if name is None:
        return None
    for root in (folder, os.path.dirname(folder)):  # SSL/ split files: mappings one level up
        candidate = names.class_mappings_path(name, root)
        if os.path.isfile(candidate):
            return read_class_mappings(candidate)
    return None


def read_class_mappings(path):
    """Class names in index order from a {"0": "name0", ...} JSON file."""
    try:
        with open(path) as f:
            mapping = json.load(f)
        names = [str(mapping[str(i)]) for i in range(len(mapping))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError('%s: not a class mapping {"0": "name", ...} (%s)' % (path, e))
    return names


def write_class_mappings(path, class_names):
    """Write {"0": names[0], ...} atomically."""
    with atomic_output(path) as tmp:
        write_class_mappings_to(tmp, class_names)


def write_class_mappings_to(path, class_names):
    """Write {"0": names[0], ...} to `path` directly (for use inside atomic_outputs)."""
    with open(path, 'w') as f:
        json.dump(dict((str(i), name) for i, name in enumerate(class_names)), f, indent=1)
        f.write('\n')


def write_synthetic_dataset(root, count=2048, size=32, nclass=10):
    """A random-pixel 32x32 RGB dataset in the real layout under `root` (test set, split
    synthetic.1@256 with `count` unlabeled images), for timing only; returns its dataset id."""
    rng = np.random.RandomState(0)

    def write(path, n):
        images = rng.randint(0, 256, [n, size, size, 3]).astype(np.uint8)
        write_arrays(path, images, np.arange(n) % nclass)
    split = names.split_files('synthetic', 1, 256, root)
    write(names.dataset_path('synthetic', 'test', root), 256)
    write(split['label'], 256)
    write(split['unlabel'], count)
    return names.dataset_id('synthetic', 1, 256, 0)
