#!/usr/bin/env python
"""Build $ML_DATA/{name}-train/-test[/-extra].tfrecord and {name}_class_mappings.json.

Sources: cifar10, cifar100 (python pickle archives), svhn (.mat files), stl10 (binary archive),
digits (scikit-learn's bundled 8x8 digits, offline) and custom (image folders, one per class).
"""

import collections
import contextlib
import importlib
import multiprocessing
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
import tqdm  # noqa: E402

from libml import folders, names, records  # noqa: E402
from libml.utils import UserError, cli_main, file_md5, ml_data_dir  # noqa: E402

FLAGS = flags.FLAGS

CifarLayout = collections.namedtuple(
    'CifarLayout', 'archive md5 folder train test meta names_key labels_key')
CIFAR = {
    'cifar10': CifarLayout('cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a',
                           'cifar-10-batches-py', ['data_batch_%d' % i for i in range(1, 6)],
                           ['test_batch'], 'batches.meta', 'label_names', 'labels'),
    'cifar100': CifarLayout('cifar-100-python.tar.gz', 'eb9058c3a382ffc7106e4002c42a8d85',
                            'cifar-100-python', ['train'], ['test'], 'meta',
                            'fine_label_names', 'fine_labels'),
}
CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/'
SVHN_URL = 'http://ufldl.stanford.edu/housenumbers/'
SVHN_FILES = collections.OrderedDict([
    ('train', ('train_32x32.mat', 'e26dedcc434d2e4c54c9b2d4a06d8373')),
    ('test', ('test_32x32.mat', 'eb5a983be6a315427106f1b164d9cef3')),
    ('extra', ('extra_32x32.mat', 'a93ce644f1a588dc4d68dda5feec44a7')),
])
STL10_URL = 'http://ai.stanford.edu/~acoates/stl10/'
STL10_ARCHIVE = ('stl10_binary.tar.gz', '91f7769df0f17e558f3565bffb0c7dfb')
STL10_SIZE = 96
DIGITS_TEST = 300  # the last 300 of scikit-learn's 1,797 digits are the test set
DATASETS = ('cifar10', 'cifar100', 'svhn', 'stl10', 'digits', 'custom')

# One part of a dataset: `encode` turns each of `items` (an array or a file path) into
# (png bytes, shape) in a worker process; `labels` run parallel to `items`.
Part = collections.namedtuple('Part', 'suffix encode items labels')


def define_flags():
    flags.DEFINE_string('source', None, 'Already downloaded archive (cifar10, cifar100, stl10) '
                        'or folder holding the .mat files (svhn); default: download.')
    flags.DEFINE_string('md5', None, 'Expected MD5 of the cifar10/cifar100/stl10 archive instead '
                        'of the published one (for re-packed archives and tests).')
    flags.DEFINE_string('name', None, 'custom: name of the dataset to write.')
    flags.DEFINE_string('traindir', None, 'custom: folder with one sub-folder of images per class.')
    flags.DEFINE_string('testdir', None, 'custom: folder with the same class sub-folders.')
    flags.DEFINE_string('unlabeldir', None, 'custom: folder of unlabeled images (optional).')
    flags.DEFINE_integer('workers', os.cpu_count() or 1,
                         'Processes that decode and PNG-encode images.')


# ---------------------------------------------------------------- writing


def _png_from_array(image):
    """(PNG bytes, shape) of a uint8 HxWxC array."""
    return records.encode_png(image), tuple(image.shape)


def _png_from_file(path):
    """(PNG bytes, shape) of an image file; UserError naming the file when unreadable."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise UserError('%s: cannot read (%s)' % (path, e.strerror))
    image = records.decode_image(data, path)
    return records.encode_png(image), image.shape


@contextlib.contextmanager
def _mapper(workers):
    """An ordered imap over `workers` forked processes (the built-in map when 1 or no fork)."""
    if workers <= 1 or 'fork' not in multiprocessing.get_all_start_methods():
        yield map
        return
    pool = multiprocessing.get_context('fork').Pool(workers)
    try:
        yield lambda function, items: pool.imap(function, items, chunksize=64)
    finally:
        pool.terminate()


class _ShapeCheck(object):
    """Remembers the first image's shape and rejects any image of another shape."""

    def __init__(self):
        self.shape, self.first = None, None

    def __call__(self, name, shape):
        if self.shape is None:
            self.shape, self.first = shape, name
        elif shape != self.shape:
            raise UserError('%s is %s but %s is %s; all images must have the same size and '
                            'channels' % (name, records.format_shape(shape), self.first,
                                          records.format_shape(self.shape)))


def _examples(part, encoded, nclass, check_shape):
    """Serialized examples of a part, checking shapes and labels on the way."""
    allowed = (records.UNLABELED,) if part.suffix == 'extra' else ()
    for index, ((png, shape), label) in enumerate(zip(encoded, part.labels)):
        item = part.items[index]
        name = item if isinstance(item, str) else '%s image %d' % (part.suffix, index)
        check_shape(name, shape)
        if not (0 <= label < nclass or label in allowed):
            raise UserError('%s: label %d outside [0, %d)' % (name, label, nclass))
        yield records.make_example(png, label)


def write_dataset(name, class_names, parts, workers=1):
    """Write every part and the class mappings together: all files appear, or none."""
    paths = [names.dataset_path(name, part.suffix) for part in parts]
    mappings = names.class_mappings_path(name)
    check_shape = _ShapeCheck()
    counts = []
    with records.atomic_outputs(paths + [mappings]) as tmps, _mapper(workers) as imap:
        for part, tmp in zip(parts, tmps):
            encoded = tqdm.tqdm(imap(part.encode, part.items), total=len(part.items),
                                desc=part.suffix, leave=False, disable=None)
            counts.append(records.write_serialized(
                tmp, _examples(part, encoded, len(class_names), check_shape)))
            if not counts[-1]:
                raise UserError('%s: no images for %s' % (name, part.suffix))
        records.write_class_mappings_to(tmps[-1], class_names)
    for path, count in zip(paths, counts):
        print('wrote %s: %d images %s' % (path, count, records.format_shape(check_shape.shape)))
    print('wrote %s: %d classes: %s' % (mappings, len(class_names), ', '.join(class_names)))
    return counts


def _array_part(suffix, images, labels):
    return Part(suffix, _png_from_array, images, np.asarray(labels, dtype=np.int64))


# ---------------------------------------------------------------- archives


def verify_md5(path, expected):
    """UserError unless the file exists and has the expected MD5."""
    if not os.path.isfile(path):
        raise UserError('%s: no such file' % path)
    actual = file_md5(path)
    if actual != expected.lower():
        raise UserError('%s: MD5 %s, expected %s; the file is damaged or not the original '
                        '(delete it and download again)' % (path, actual, expected))


def download(url, path):
    """Download `url` to `path` atomically unless it is there already; return `path`."""
    if os.path.isfile(path):
        return path
    print('downloading %s' % url)
    try:
        with records.atomic_output(path) as tmp:
            with urllib.request.urlopen(url) as response, open(tmp, 'wb') as f:
                shutil.copyfileobj(response, f, 1 << 20)
    except OSError as e:
        raise UserError('cannot download %s (%s); download it yourself and pass --source'
                        % (url, e))
    return path


def fetch(filename, url, md5, source=None):
    """The verified source file: `source` when given, else a download into $ML_DATA/downloads."""
    path = source or download(url + filename, os.path.join(ml_data_dir(), 'downloads', filename))
    verify_md5(path, md5)
    return path


def _check_member(archive, member, dest):
    """UserError unless the tar member is a plain file or folder that stays inside `dest`."""
    name = member.name.replace('\\', '/')
    if name.startswith('/') or ':' in name.split('/')[0] or '..' in name.split('/'):
        raise UserError('%s: refusing member %r: absolute path or ".." (unsafe archive)'
                        % (archive, member.name))
    if not (member.isfile() or member.isdir()):
        raise UserError('%s: refusing member %r: links and device files are not extracted '
                        '(unsafe archive)' % (archive, member.name))
    target = os.path.realpath(os.path.join(dest, name))
    if not target.startswith(os.path.realpath(dest) + os.sep):
        raise UserError('%s: refusing member %r: it lands outside the target folder'
                        % (archive, member.name))
    return target


def safe_extract(archive, dest):
    """Extract plain files and folders of a tar archive into `dest`; check every member first."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            targets = [_check_member(archive, member, dest) for member in members]
            for member, target in zip(members, targets):
                if member.isdir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, 'wb') as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError('%s: cannot read the archive (%s)' % (archive, e))


@contextlib.contextmanager
def extracted(archive):
    """A temporary folder in $ML_DATA holding the safely extracted archive."""
    root = ml_data_dir()
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='.extract-', dir=root) as dest:
        safe_extract(archive, dest)
        yield dest


# ---------------------------------------------------------------- CIFAR pickles

# The only globals a pickle of dicts, lists, bytes and numpy arrays refers to. `_codecs.encode`
# is how Python 3 writes bytes at protocol 2; the numpy names exist as numpy.core (numpy 1.x,
# the original archives) and numpy._core (numpy 2.x).
_PICKLE_GLOBALS = frozenset([
    ('_codecs', 'encode'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
])


def _numpy_global(module, name):
    """The allowed global, imported from whichever of numpy._core / numpy.core this numpy has."""
    if module in ('numpy', '_codecs'):
        return getattr(importlib.import_module(module), name)
    submodule = module.split('.')[-1]
    try:
        return getattr(importlib.import_module('numpy._core.' + submodule), name)
    except ImportError:
        return getattr(importlib.import_module('numpy.core.' + submodule), name)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError('refusing to load global %s.%s' % (module, name))
        return _numpy_global(module, name)


def load_pickle(path):
    """A pickled CIFAR batch (bytes keys, as Python 2 wrote it) through ArrayUnpickler."""
    try:
        with open(path, 'rb') as f:
            return ArrayUnpickler(f, encoding='bytes').load()
    except OSError as e:
        raise UserError('%s: cannot read (%s)' % (path, e.strerror))
    except Exception as e:  # a damaged pickle can raise nearly anything
        raise UserError('%s: not a plain CIFAR pickle (%s)' % (path, e))


def _field(batch, key, path):
    """batch[key] for bytes or str keys; UserError naming the file when absent."""
    for k in (key.encode(), key):
        if isinstance(batch, dict) and k in batch:
            return batch[k]
    raise UserError('%s: no %r entry; is this a CIFAR python archive?' % (path, key))


def read_cifar_batch(path, labels_key):
    """Images uint8 [N,32,32,3] and labels of one CIFAR pickle file."""
    batch = load_pickle(path)
    data = np.asarray(_field(batch, 'data', path))
    labels = np.asarray(_field(batch, labels_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError('%s: data is %s %s, expected uint8 [N, 3072]'
                        % (path, data.dtype, list(data.shape)))
    if labels.shape != (data.shape[0],):
        raise UserError('%s: %d labels for %d images' % (path, labels.size, data.shape[0]))
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _read_cifar_files(folder, filenames, labels_key):
    pairs = [read_cifar_batch(os.path.join(folder, f), labels_key) for f in filenames]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def build_cifar(name, source=None, md5=None, workers=1):
    """cifar10 / cifar100 from the python archive."""
    layout = CIFAR[name]
    archive = fetch(layout.archive, CIFAR_URL, md5 or layout.md5, source)
    with extracted(archive) as dest:
        folder = os.path.join(dest, layout.folder)
        meta = os.path.join(folder, layout.meta)
        class_names = [_text(n) for n in _field(load_pickle(meta), layout.names_key, meta)]
        parts = [_array_part(suffix, *_read_cifar_files(folder, files, layout.labels_key))
                 for suffix, files in (('train', layout.train), ('test', layout.test))]
    return write_dataset(name, class_names, parts, workers)


def _text(value):
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- SVHN, STL-10, digits


def read_svhn_mat(path):
    """Images uint8 [N,32,32,3] and labels 0..9 (the file's 10 means digit 0) of an SVHN .mat."""
    import scipy.io  # only SVHN needs scipy (a scikit-learn dependency)
    try:
        mat = scipy.io.loadmat(path)
        images, labels = mat['X'], mat['y'].reshape(-1).astype(np.int64)
    except Exception as e:  # scipy raises several types for bad files
        raise UserError('%s: not an SVHN .mat file (%s)' % (path, e))
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != labels.size:
        raise UserError('%s: X is %s, expected [32, 32, 3, N] with N labels'
                        % (path, list(images.shape)))
    if labels.min() < 1 or labels.max() > 10:
        raise UserError('%s: labels outside 1..10' % path)
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2), dtype=np.uint8), labels % 10


def build_svhn(source=None, md5s=None, workers=1):
    """svhn: train, test and (when present or downloadable) extra from the .mat files."""
    md5s = md5s or {}
    parts = []
    for suffix, (filename, md5) in SVHN_FILES.items():
        path = os.path.join(source, filename) if source else None
        if suffix == 'extra' and path and not os.path.isfile(path):
            print('no %s in %s: writing svhn without extra' % (filename, source))
            continue
        path = fetch(filename, SVHN_URL, md5s.get(suffix, md5), path)
        parts.append(_array_part(suffix, *read_svhn_mat(path)))
    return write_dataset('svhn', [str(d) for d in range(10)], parts, workers)


def read_stl10_images(path):
    """A lazy uint8 [N,96,96,3] view of an STL-10 .bin file (3x96x96 column-major images)."""
    size = 3 * STL10_SIZE * STL10_SIZE
    if not os.path.isfile(path) or os.path.getsize(path) % size:
        raise UserError('%s: missing, or not a whole number of 3x96x96 images' % path)
    data = np.memmap(path, np.uint8, 'r', shape=(os.path.getsize(path) // size, 3,
                                                STL10_SIZE, STL10_SIZE))
    return data.transpose(0, 3, 2, 1)


def read_stl10_labels(path, count):
    """Labels 0..9 from an STL-10 label file (stored as 1..10)."""
    labels = np.fromfile(path, np.uint8).astype(np.int64) - 1 if os.path.isfile(path) else None
    if labels is None or labels.size != count or labels.min() < 0 or labels.max() > 9:
        raise UserError('%s: missing, or not %d labels in 1..10' % (path, count))
    return labels


def build_stl10(source=None, md5=None, workers=1):
    """stl10: train, test and the 100,000 unlabeled images as extra."""
    filename, published = STL10_ARCHIVE
    archive = fetch(filename, STL10_URL, md5 or published, source)
    with extracted(archive) as dest:
        folder = os.path.join(dest, 'stl10_binary')
        names_file = os.path.join(folder, 'class_names.txt')
        if not os.path.isfile(names_file):
            raise UserError('%s: no stl10_binary/class_names.txt; is this the STL-10 binary '
                            'archive?' % archive)
        with open(names_file) as f:
            class_names = [line.strip() for line in f if line.strip()]
        parts = []
        for suffix, stem in (('train', 'train'), ('test', 'test'), ('extra', 'unlabeled')):
            images = read_stl10_images(os.path.join(folder, stem + '_X.bin'))
            labels = (np.full(len(images), records.UNLABELED) if suffix == 'extra' else
                      read_stl10_labels(os.path.join(folder, stem + '_y.bin'), len(images)))
            parts.append(_array_part(suffix, images, labels))
        return write_dataset('stl10', class_names, parts, workers)


def build_digits(workers=1):
    """digits: scikit-learn's 8x8 grayscale digits, first 1,497 train, last 300 test."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: works offline
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, :, :, None]
    labels = digits.target.astype(np.int64)
    parts = [_array_part('train', images[:-DIGITS_TEST], labels[:-DIGITS_TEST]),
             _array_part('test', images[-DIGITS_TEST:], labels[-DIGITS_TEST:])]
    return write_dataset('digits', [str(d) for d in range(10)], parts, workers)


# ---------------------------------------------------------------- custom folders


def build_custom(name, traindir, testdir, unlabeldir=None, workers=1):
    """A dataset from image folders: traindir/<class>/*, testdir/<class>/*, unlabeldir/*."""
    if not name or any(c in name for c in '-./@ '):
        raise UserError('--name %r: give a dataset name without "-", ".", "/", "@" or spaces'
                        % name)
    classes = folders.class_folders(traindir, 'traindir')
    test_classes = folders.class_folders(testdir, 'testdir')
    if classes != test_classes:
        raise UserError('class folders differ: only in --traindir: %s; only in --testdir: %s'
                        % (', '.join(sorted(set(classes) - set(test_classes))) or '-',
                           ', '.join(sorted(set(test_classes) - set(classes))) or '-'))
    parts = [Part(suffix, _png_from_file, *folders.labeled_files(folder, classes))
             for suffix, folder in (('train', traindir), ('test', testdir))]
    if unlabeldir:
        if not os.path.isdir(unlabeldir):
            raise UserError('--unlabeldir %s: no such folder' % unlabeldir)
        files = folders.image_files(unlabeldir)
        if not files:
            raise UserError('--unlabeldir %s: no PNG or JPEG images' % unlabeldir)
        parts.append(Part('extra', _png_from_file, files, [records.UNLABELED] * len(files)))
    return write_dataset(name, classes, parts, workers)


# ---------------------------------------------------------------- command line


def main(argv):
    if len(argv) != 2 or argv[1] not in DATASETS:
        raise UserError('give one dataset to build: %s (got %s)'
                        % (', '.join(DATASETS), ' '.join(argv[1:]) or 'none'))
    dataset, workers = argv[1], max(1, FLAGS.workers)
    if FLAGS.md5 and dataset not in ('cifar10', 'cifar100', 'stl10'):
        raise UserError('--md5 applies to cifar10, cifar100 and stl10 archives only')
    if dataset in CIFAR:
        build_cifar(dataset, FLAGS.source, FLAGS.md5, workers)
    elif dataset == 'svhn':
        build_svhn(FLAGS.source, None, workers)
    elif dataset == 'stl10':
        build_stl10(FLAGS.source, FLAGS.md5, workers)
    elif dataset == 'digits':
        build_digits(workers)
    elif not (FLAGS.name and FLAGS.traindir and FLAGS.testdir):
        raise UserError('custom needs --name, --traindir and --testdir (--unlabeldir optional)')
    else:
        build_custom(FLAGS.name, FLAGS.traindir, FLAGS.testdir, FLAGS.unlabeldir, workers)


if __name__ == '__main__':
    define_flags()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
