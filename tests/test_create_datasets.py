"""create_datasets.py: CIFAR archives in the real format, SVHN, STL-10, digits, image folders."""
import io
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from libml import names, records, utils
from libml.utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import create_datasets  # noqa: E402


def _written(ml_data):
    return sorted(os.listdir(ml_data)) if os.path.isdir(ml_data) else []


def _tar(path, files):
    """A .tar.gz holding {member name: bytes}."""
    with tarfile.open(path, 'w:gz') as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cifar_archive(path, name, per_file=2, replace=None):
    """A tiny archive in the real CIFAR python layout; returns (archive, train, test arrays)."""
    layout = create_datasets.CIFAR[name]
    rng = np.random.RandomState(1)
    nclass = 10 if name == 'cifar10' else 100
    files, arrays = {}, {}
    for suffix, stems in (('train', layout.train), ('test', layout.test)):
        data = rng.randint(0, 256, (per_file * len(stems), 3072)).astype(np.uint8)
        labels = rng.randint(0, nclass, len(data))
        arrays[suffix] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels
        for i, stem in enumerate(stems):
            rows = slice(i * per_file, (i + 1) * per_file)
            batch = {b'batch_label': b'batch', b'data': data[rows],
                     layout.labels_key.encode(): labels[rows].tolist(),
                     b'filenames': [b'x.png'] * per_file}
            files[stem] = pickle.dumps(batch, protocol=2)
    names = [('class%d' % i).encode() for i in range(nclass)]
    files[layout.meta] = pickle.dumps({layout.names_key.encode(): names}, protocol=2)
    files.update(replace or {})
    members = dict(('%s/%s' % (layout.folder, k), v) for k, v in files.items())
    return _tar(path, members), arrays['train'], arrays['test']


def test_cifar10_archive_in_real_format(tmp_path, ml_data):
    archive, train, test = _cifar_archive(str(tmp_path / 'c10.tar.gz'), 'cifar10')
    create_datasets.build_cifar('cifar10', archive, utils.file_md5(archive))
    for part, (images, labels) in (('train', train), ('test', test)):
        loaded, loaded_labels = records.load_arrays(names.dataset_path('cifar10', part))
        np.testing.assert_array_equal(loaded, images)
        assert loaded_labels.tolist() == labels.tolist()
    class_names = records.read_class_mappings(names.class_mappings_path('cifar10'))
    assert class_names[:2] == ['class0', 'class1'] and len(class_names) == 10
    assert not [f for f in _written(ml_data) if f.startswith('.')]  # temp folder removed


def test_cifar100_uses_fine_labels(tmp_path, ml_data):
    archive, train, _ = _cifar_archive(str(tmp_path / 'c100.tar.gz'), 'cifar100')
    create_datasets.build_cifar('cifar100', archive, utils.file_md5(archive))
    _, labels = records.load_arrays(names.dataset_path('cifar100', 'train'))
    assert labels.tolist() == train[1].tolist()
    assert len(records.read_class_mappings(names.class_mappings_path('cifar100'))) == 100


def test_md5_mismatch_is_one_line_and_writes_nothing(tmp_path, ml_data):
    archive, _, _ = _cifar_archive(str(tmp_path / 'c10.tar.gz'), 'cifar10')
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'create_datasets.py'), 'cifar10',
         '--source=' + archive], env=dict(os.environ, ML_DATA=ml_data),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and archive in error[0]
    assert utils.file_md5(archive) in error[0]
    assert 'expected c58f30108f718f92721af3b95e74349a' in error[0]
    assert not [f for f in _written(ml_data) if f.endswith('.tfrecord')]


class _Evil(object):
    def __reduce__(self):
        return os.system, ('touch pwned',)


def test_malicious_pickle_is_refused(tmp_path, ml_data, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    evil = pickle.dumps({b'data': _Evil(), b'labels': []}, protocol=2)
    archive, _, _ = _cifar_archive(str(tmp_path / 'c10.tar.gz'), 'cifar10',
                                   replace={'data_batch_1': evil})
    with pytest.raises(UserError, match='data_batch_1: .*refusing to load global .*system'):
        create_datasets.build_cifar('cifar10', archive, utils.file_md5(archive))
    assert not os.path.exists(str(tmp_path / 'pwned'))
    assert not [f for f in _written(ml_data) if f.endswith('.tfrecord')]


@pytest.mark.parametrize('kind', ['dotdot', 'absolute', 'symlink'])
def test_unsafe_tar_member_is_rejected(tmp_path, kind):
    archive = str(tmp_path / 'bad.tar.gz')
    with tarfile.open(archive, 'w:gz') as tar:
        info = tarfile.TarInfo({'dotdot': 'a/../../evil', 'absolute': '/tmp/evil',
                                'symlink': 'a/link'}[kind])
        if kind == 'symlink':
            info.type, info.linkname = tarfile.SYMTYPE, '/etc/passwd'
        else:
            info.size = 4
        tar.addfile(info, io.BytesIO(b'evil') if kind != 'symlink' else None)
    dest = tmp_path / 'dest'
    dest.mkdir()
    with pytest.raises(UserError, match='bad.tar.gz: refusing member'):
        create_datasets.safe_extract(archive, str(dest))
    assert os.listdir(str(dest)) == [] and not os.path.exists(str(tmp_path / 'evil'))


def test_svhn_mat_files_map_label_10_to_0(tmp_path, ml_data):
    import scipy.io
    rng = np.random.RandomState(2)
    md5s = {}
    for suffix, (filename, _) in create_datasets.SVHN_FILES.items():
        images = rng.randint(0, 256, (32, 32, 3, 3)).astype(np.uint8)
        scipy.io.savemat(str(tmp_path / filename), {'X': images, 'y': np.array([[10], [1], [9]])})
        md5s[suffix] = utils.file_md5(str(tmp_path / filename))
    create_datasets.build_svhn(str(tmp_path), md5s)
    loaded, labels = records.load_arrays(names.dataset_path('svhn', 'extra'))
    assert labels.tolist() == [0, 1, 9]
    np.testing.assert_array_equal(loaded, images.transpose(3, 0, 1, 2))


def test_stl10_binary_archive(tmp_path, ml_data):
    rng = np.random.RandomState(3)
    images = rng.randint(0, 256, (2, 96, 96, 3)).astype(np.uint8)
    column_major = images.transpose(0, 3, 2, 1).tobytes()
    files = {'train_X.bin': column_major, 'train_y.bin': bytes([1, 10]),
             'test_X.bin': column_major, 'test_y.bin': bytes([2, 3]),
             'unlabeled_X.bin': column_major, 'class_names.txt': b'airplane\nbird\n' + b'x\n' * 8}
    archive = _tar(str(tmp_path / 'stl.tar.gz'),
                   dict(('stl10_binary/' + k, v) for k, v in files.items()))
    create_datasets.build_stl10(archive, utils.file_md5(archive))
    loaded, labels = records.load_arrays(names.dataset_path('stl10', 'train'))
    np.testing.assert_array_equal(loaded, images)
    assert labels.tolist() == [0, 9]
    assert records.load_arrays(names.dataset_path('stl10', 'extra'))[1].tolist() == [-1, -1]


def test_digits_offline_split(ml_data):
    create_datasets.build_digits()
    train, train_labels = records.load_arrays(names.dataset_path('digits', 'train'))
    test, _ = records.load_arrays(names.dataset_path('digits', 'test'))
    assert train.shape == (1497, 8, 8, 1) and test.shape == (300, 8, 8, 1)
    assert train.max() == 255 and train_labels[:3].tolist() == [0, 1, 2]


def _save(path, size=(6, 6), mode='RGB', fmt='PNG'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color=120 if mode == 'L' else (10, 200, 30)).save(path, fmt)


def _folders(root, mode='RGB'):
    for path in ('train/cat/a.PNG', 'train/cat/b.png', 'train/dog/c.png',
                 'test/cat/d.png', 'test/dog/e.png', 'unlabeled/x.png', 'unlabeled/sub/y.png'):
        _save(os.path.join(root, path), mode=mode)
    _save(os.path.join(root, 'train/dog/f.JPEG'), mode=mode, fmt='JPEG')
    open(os.path.join(root, 'train/dog/notes.txt'), 'w').close()  # not an image: skipped


def _build_custom(root, workers=1, unlabeled=True):
    return create_datasets.build_custom(
        'mine', os.path.join(root, 'train'), os.path.join(root, 'test'),
        os.path.join(root, 'unlabeled') if unlabeled else None, workers)


@pytest.mark.parametrize('mode,channels', [('RGB', 3), ('L', 1)])
def test_custom_folders(tmp_path, ml_data, mode, channels):
    _folders(str(tmp_path), mode)
    assert _build_custom(str(tmp_path), workers=2) == [4, 2, 2]
    images, labels = records.load_arrays(names.dataset_path('mine', 'train'))
    assert images.shape == (4, 6, 6, channels) and labels.tolist() == [0, 0, 1, 1]
    assert records.load_arrays(names.dataset_path('mine', 'extra'))[1].tolist() == [-1, -1]
    assert records.read_class_mappings(names.class_mappings_path('mine')) == ['cat', 'dog']


def _custom_error(tmp_path, ml_data, match, workers=1):
    with pytest.raises(UserError, match=match):
        _build_custom(str(tmp_path), workers)
    assert _written(ml_data) == []


def test_custom_mixed_sizes_names_file_and_shapes(tmp_path, ml_data):
    _folders(str(tmp_path))
    _save(str(tmp_path / 'test/dog/e.png'), size=(7, 6))
    _custom_error(tmp_path, ml_data, r'test/dog/e.png is 6x7x3 but .*train/cat/a.PNG is 6x6x3',
                  workers=2)


def test_custom_mixed_channels(tmp_path, ml_data):
    _folders(str(tmp_path))
    _save(str(tmp_path / 'unlabeled/x.png'), mode='L')
    _custom_error(tmp_path, ml_data, r'unlabeled/x.png is 6x6x1 but')


def test_custom_empty_class_folder(tmp_path, ml_data):
    _folders(str(tmp_path))
    os.makedirs(str(tmp_path / 'train/fox'))
    os.makedirs(str(tmp_path / 'test/fox'))
    _custom_error(tmp_path, ml_data, r'train/fox: no PNG or JPEG images')


def test_custom_corrupt_image(tmp_path, ml_data):
    _folders(str(tmp_path))
    with open(str(tmp_path / 'train/dog/c.png'), 'wb') as f:
        f.write(b'\x89PNG garbage')
    _custom_error(tmp_path, ml_data, r'train/dog/c.png: cannot decode image', workers=2)


def test_custom_class_sets_must_match(tmp_path, ml_data):
    _folders(str(tmp_path))
    _save(str(tmp_path / 'test/fox/g.png'))
    _custom_error(tmp_path, ml_data, r'only in --traindir: -; only in --testdir: fox')
