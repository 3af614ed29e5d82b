"""scripts/benchmark_activation.py: the activation's times in both dtypes, and the gradients agree."""

import os
import re
import subprocess
import sys

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark_activation.py')


def _run(*flags):
    return subprocess.run([sys.executable, SCRIPT] + list(flags), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))


def test_prints_forward_and_both_gradients_in_both_dtypes_with_their_ratio():
    out = _run('--shape=2,4,4,3', '--runs=2', '--warmup=1', '--threads=1')
    assert out.returncode == 0, out.stdout
    for dtype in ('float32', 'bfloat16'):
        assert re.search(r'^%s +gradient after == before, bit for bit: yes' % dtype, out.stdout,
                         re.M), out.stdout
    rows = re.findall(r'^(forward|gradient before|gradient after) \(.*\) +([\d.]+) ms +([\d.]+) ms'
                      r' +([\d.]+)x$', out.stdout, re.M)
    assert [row[0] for row in rows] == ['forward', 'gradient before', 'gradient after']
    assert re.search(r'gradient after in bfloat16 / gradient before in float32: [\d.]+x', out.stdout)


def test_a_bad_shape_is_one_clear_line():
    out = _run('--shape=2,x')
    assert out.returncode != 0
    assert '--shape=2,x: give positive sizes' in out.stdout
