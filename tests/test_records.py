"""TFRecord I/O: PNG round trips, record files, and errors that name the file and record."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from libml import names, records
from libml.utils import UserError


def _images(n, shape=(4, 5, 3), seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n,) + shape).astype(np.uint8)


def _truncate(path, keep_bytes):
    with open(path, 'r+b') as f:
        f.truncate(keep_bytes)


def test_png_round_trip_keeps_pixels_and_channel_dim():
    for shape in ((4, 5, 3), (4, 5, 1)):
        image = _images(1, shape)[0]
        decoded = records.decode_image(records.encode_png(image))
        assert decoded.shape == shape and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, image)


def test_decode_jpeg_and_palette_give_rgb():
    buf = io.BytesIO()
    Image.fromarray(_images(1)[0]).save(buf, 'JPEG')
    assert records.decode_image(buf.getvalue()).shape == (4, 5, 3)
    buf = io.BytesIO()
    Image.fromarray(_images(1)[0]).convert('P').save(buf, 'PNG')
    assert records.decode_image(buf.getvalue()).shape == (4, 5, 3)


def test_decode_garbage_names_the_image():
    with pytest.raises(UserError, match='cat.png: cannot decode image'):
        records.decode_image(b'not an image', 'cat.png')


def test_write_and_read_records_round_trip(tmp_path):
    path = str(tmp_path / 'd-train.tfrecord')
    images, labels = _images(6), [0, 1, 2, -1, 1, 0]
    assert records.write_arrays(path, images, labels) == 6
    read = list(records.read_records(path))
    assert [r[0] for r in read] == list(range(6))
    assert [r[2] for r in read] == labels
    loaded, loaded_labels = records.load_arrays(path)
    np.testing.assert_array_equal(loaded, images)
    assert loaded_labels.dtype == np.int64 and loaded_labels.tolist() == labels


def test_missing_file_is_named(tmp_path):
    path = str(tmp_path / 'nope.tfrecord')
    with pytest.raises(UserError, match='nope.tfrecord: no such TFRecord file'):
        list(records.read_records(path))


def test_truncated_file_names_record_index(tmp_path):
    path = str(tmp_path / 'd.tfrecord')
    records.write_arrays(path, _images(5), [0] * 5)
    _truncate(path, os.path.getsize(path) - 10)  # the last record loses its tail
    with pytest.raises(UserError, match=r'd.tfrecord: corrupt or truncated at record 4'):
        list(records.read_records(path))


def test_corrupt_byte_names_record_index(tmp_path):
    path = str(tmp_path / 'd.tfrecord')
    records.write_arrays(path, _images(3), [0] * 3)
    record_size = os.path.getsize(path) // 3
    with open(path, 'r+b') as f:
        f.seek(record_size + 20)  # inside record 1's data
        byte = f.read(1)
        f.seek(record_size + 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(UserError, match='corrupt or truncated at record 1'):
        list(records.read_records(path))


def test_unparseable_example_names_record_index(tmp_path):
    path = str(tmp_path / 'd.tfrecord')
    records.write_records(path, [records.make_example(b'x', 0), b'\xff\xff garbage'])
    with pytest.raises(UserError, match='d.tfrecord record 1: not an image/label'):
        list(records.read_records(path))


def test_load_arrays_rejects_other_shape_and_bad_png(tmp_path):
    path = str(tmp_path / 'd.tfrecord')
    examples = [records.make_example(records.encode_png(im), 0) for im in _images(2)]
    records.write_records(path, examples + [records.make_example(
        records.encode_png(_images(1, (8, 8, 3))[0]), 0)])
    with pytest.raises(UserError, match='record 2: image shape 8x8x3 differs from .* 4x5x3'):
        records.load_arrays(path)
    records.write_records(path, examples + [records.make_example(b'broken', 0)])
    with pytest.raises(UserError, match='d.tfrecord record 2: cannot decode image'):
        records.load_arrays(path)


def test_failed_write_leaves_no_file(tmp_path):
    path = str(tmp_path / 'd.tfrecord')

    def examples():
        yield records.make_example(b'x', 0)
        raise UserError('source went away')
    with pytest.raises(UserError):
        records.write_records(path, examples())
    assert os.listdir(str(tmp_path)) == []


def test_atomic_outputs_all_or_nothing(tmp_path):
    paths = [str(tmp_path / name) for name in ('a', 'b')]
    with pytest.raises(RuntimeError):
        with records.atomic_outputs(paths) as tmps:
            open(tmps[0], 'w').close()
            raise RuntimeError('second file failed')
    assert os.listdir(str(tmp_path)) == []
    with records.atomic_outputs(paths) as tmps:
        for tmp in tmps:
            open(tmp, 'w').close()
    assert sorted(os.listdir(str(tmp_path))) == ['a', 'b']


def test_class_mappings_round_trip_and_lookup(tmp_path):
    path = names.class_mappings_path('SSL/d.1@10', str(tmp_path))
    assert path == str(tmp_path / 'd_class_mappings.json')
    records.write_class_mappings(path, ['cat', 'dog'])
    assert records.read_class_mappings(path) == ['cat', 'dog']
    split_file = str(tmp_path / 'SSL' / 'd.1@10-label.tfrecord')
    assert records.mappings_beside(split_file) == ['cat', 'dog']
    assert records.mappings_beside(str(tmp_path / 'other.tfrecord')) is None
    with open(path, 'w') as f:
        f.write('{"1": "cat"}')
    with pytest.raises(UserError, match='not a class mapping'):
        records.read_class_mappings(path)
