"""inspect_dataset.py: counts, class histogram with names, shapes; corrupt files named."""
import os
import subprocess
import sys

import numpy as np

from libml import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import inspect_dataset  # noqa: E402


def _file(folder, labels, shape=(4, 6, 3), name='pets-train'):
    path = os.path.join(folder, name + '.tfrecord')
    records.write_arrays(path, np.zeros((len(labels),) + shape, np.uint8), labels)
    return path


def test_histogram_uses_class_names_and_shows_unlabeled(tmp_path):
    path = _file(str(tmp_path), [1, 0, 1, -1])
    records.write_class_mappings(str(tmp_path / 'pets_class_mappings.json'), ['cat', 'dog'])
    lines = inspect_dataset.describe(path)
    assert lines[0] == '%s: 4 records, image shape 4x6x3' % path
    assert [line.split() for line in lines[1:]] == [
        ['unlabeled', '1'], ['0', 'cat', '1'], ['1', 'dog', '2']]


def test_several_shapes_are_counted(tmp_path):
    path = str(tmp_path / 'mixed.tfrecord')
    examples = [records.make_example(records.encode_png(np.zeros(s, np.uint8)), 0)
                for s in ((2, 2, 1), (2, 2, 1), (3, 3, 3))]
    records.write_records(path, examples)
    assert inspect_dataset.describe(path)[0].endswith('image shape 2x2x1 (2), 3x3x3 (1)')


def test_cli_names_file_and_record_of_a_truncated_file(tmp_path):
    good = _file(str(tmp_path), [0, 1])
    bad = _file(str(tmp_path), [0, 1, 2], name='bad')
    with open(bad, 'r+b') as f:
        f.truncate(os.path.getsize(bad) - 5)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'inspect_dataset.py'), good, bad],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 1
    assert result.stdout.startswith('%s: 2 records' % good)
    error = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and 'bad.tfrecord: corrupt or truncated at record 2' in error[0]
