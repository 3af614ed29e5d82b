"""scripts/benchmark_augment.py: prints views/s of ours and of the reference's Pillow functions
(MindSpore's when installed), their ratios and the host cores an Ascend card needs. Tiny runs:
this checks the plumbing and the arithmetic of the lines, not the speed."""

import os
import re
import subprocess
import sys

from conftest import ROOT, assert_one_line_error

SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark_augment.py')
REFERENCE = os.path.join(os.path.dirname(ROOT), 'shared', 'reference',
                         'google-research-fixmatch-d4985a1.tar.gz')
OURS = re.escape('ours, weak_views + strong_views, batch 16')


def run(args):
    return subprocess.run([sys.executable, SCRIPT] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))


def test_prints_views_per_second_ratios_and_cores(tmp_path):
    out = run(['--images=16', '--views=32', '--batch=16', '--repeats=1',
               '--data=' + str(tmp_path / 'absent.tar.gz')])
    text = out.stdout
    assert out.returncode == 0, text
    assert 'random 32x32 images instead' in text
    rate = r' +([\d.]+) views/s +\(median of 1; runs: [\d. ]+\)$'
    assert re.search('^' + OURS + r' +[\d.]+ views per CPU second$', text, re.M)
    ours = re.search('^' + OURS + rate, text, re.M)
    assert ours and float(ours.group(1)) > 0, text
    cores = re.search(r'needs 10409 strong views/s: ([\d.]+) host cores of ours at ([\d.]+) '
                      r'views/s per core$', text, re.M)
    assert cores, text
    needed = float(cores.group(1))
    assert abs(needed - 10409 / float(ours.group(1))) < 0.06 + 0.05 * needed
    if os.path.exists(REFERENCE):
        pillow = re.search(r'^reference Pillow \(rac \+ cutout\)' + rate, text, re.M)
        ratio = re.search('^ratio ' + OURS + r' / reference Pillow \(rac \+ cutout\) = ([\d.]+)x '
                          r'\(wall clock\), ([\d.]+)x \(CPU time\)$', text, re.M)
        assert pillow and ratio, text
        expected = float(ours.group(1)) / float(pillow.group(1))
        assert abs(float(ratio.group(1)) - expected) <= 0.01 + 0.01 * expected
    assert ('mindspore is not installed' in text) != bool(re.search('^MindSpore', text, re.M))


def test_a_core_outside_the_allowed_set_is_one_error_line():
    out = run(['--core=4096'])
    assert_one_line_error(out.returncode, out.stdout, '--core=4096')
