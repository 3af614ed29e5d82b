"""libml/__init__.py: the TensorFlow environment every entry point sets before TensorFlow loads."""
import ast
import glob
import importlib
import os
import subprocess
import sys

import pytest

import libml
from conftest import ROOT

ENTRY_POINTS = (['realmix.py', 'run_sh.py', 'read_fromobs.py', 'tests/conftest.py',
                 'tests/distributed_worker.py'] + sorted(
                     os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'scripts', '*.py'))))


def _first_import_line(tree, package):
    """Line of the first module-level import of `package` (or a submodule); None when absent."""
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        if any(name == package or name.startswith(package + '.') for name in names):
            return node.lineno
    return None


@pytest.mark.parametrize('path', ENTRY_POINTS)
def test_entry_points_import_libml_before_tensorflow(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    tensorflow_line = _first_import_line(tree, 'tensorflow')
    if tensorflow_line is None:
        return  # it never loads TensorFlow itself (a subprocess does, through its own entry point)
    libml_line = _first_import_line(tree, 'libml')
    assert libml_line is not None and libml_line < tensorflow_line, (
        '%s imports tensorflow (line %d) before libml: TensorFlow then loads without its '
        'oneDNN CPU kernels on AVX2 machines' % (path, tensorflow_line))


def test_a_users_own_onednn_and_keras_choices_are_kept(monkeypatch):
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
    monkeypatch.setenv('TF_USE_LEGACY_KERAS', '0')
    importlib.reload(libml)
    assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '0' and os.environ['TF_USE_LEGACY_KERAS'] == '0'


def test_training_entry_point_runs_tensorflow_with_onednn_kernels():
    probe = pytest.importorskip('tensorflow.python.util._pywrap_util_port',
                                reason='this TensorFlow has no oneDNN (TF 1.15 stock wheels)')
    del probe
    env = dict((k, v) for k, v in os.environ.items()
               if k not in ('TF_ENABLE_ONEDNN_OPTS', 'TF_USE_LEGACY_KERAS'))
    code = ('import realmix, sys\nfrom tensorflow.python.util import _pywrap_util_port\n'
            'print("onednn", _pywrap_util_port.IsMklEnabled())\n'
            'print("loaded", [m for m in ("keras", "sklearn") if m in sys.modules])')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert out.returncode == 0, out.stdout
    assert 'onednn True' in out.stdout
    # Neither Keras (TF 2.x's eager load of it is skipped) nor scikit-learn (wanted at the first
    # report only) slows the start of every command.
    assert 'loaded []' in out.stdout, out.stdout

