"""scripts/benchmark_scaling.py: one worker against two (scripts/launch.py) and two independent
ones timed together, the table, the ratio and the traced split of a step; a bad flag is one error
line. A tiny network and two timed steps: this checks the plumbing, not the speed."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark_scaling.py')
TINY = ['--arch=smallconv', '--repeat=1', '--batch=8']  # --filters: the script's default, 16


def run(args, tmp_path, timeout=300):
    return subprocess.run(
        [sys.executable, SCRIPT] + args,
        env=dict(os.environ, ML_DATA=str(tmp_path), CUDA_VISIBLE_DEVICES='', TF_CPP_MIN_LOG_LEVEL='2'),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)


def test_two_workers_against_one_prints_the_table_and_the_ratio(tmp_path):
    out = run(['--workers=2', '--steps=2', '--warmup=1', '--repeats=1'] + TINY, tmp_path)
    assert out.returncode == 0, out.stdout
    text = out.stdout
    one = re.search(r'^1 worker  x 1 thread +([\d.]+) img/s +\(runs: ([\d.]+)\)$', text, re.M)
    two = re.search(r'^2 workers x 1 thread +([\d.]+) img/s +\(runs: ([\d.]+)\)$', text, re.M)
    assert one and two, text
    assert float(one.group(1)) > 0 and float(two.group(1)) > 0
    ratio = re.search(r'^ratio 2 workers / 1 worker = ([\d.]+) +\(ideal 2\.00, goal >= 1\.80: '
                      r'(met|missed)\)$', text, re.M)
    assert ratio, text
    assert abs(float(ratio.group(1)) - float(two.group(1)) / float(one.group(1))) < 0.01
    assert re.search(r'^machine: \d+ CPU cores, .+, TensorFlow [\d.]+\S*, 1 thread per worker$',
                     text, re.M), text
    assert 'arch=smallconv filters=16 repeat=1' in text.splitlines()[0]  # not the method's 32
    ceiling = re.search(r'^2 independent single workers at once \(no collectives\): ([\d.]+) img/s '
                        r'in all, ([\d.]+) x one', text, re.M)
    assert ceiling and float(ceiling.group(1)) > 0, text
    lockstep = re.search(r'^their steps vary: in lockstep each step would last the slowest of 2, '
                         r'(\d+) % longer than their mean step \(median of runs\): '
                         r'at best ([\d.]+) x one synchronous$', text, re.M)
    assert lockstep and float(lockstep.group(2)) <= float(ceiling.group(2)) + 0.01, text
    split = dict((m.group(1), [float(x) for x in m.group(2).split()]) for m in re.finditer(
        r'^(1 worker|2 workers|1 of 2 indep\.) +((?:[\d.]+ +){3}[\d.]+)$', text, re.M))
    assert set(split) == {'1 worker', '2 workers', '1 of 2 indep.'}, text
    for row, (step, compute, collectives, session) in split.items():
        # The split of one step (the median one): its parts add up to it, to the printed rounding.
        assert compute > 0 and session >= 0 and abs(compute + collectives + session - step) <= 0.2, text
        assert (collectives > 0) == (row == '2 workers'), text  # the others exchange nothing
    assert 'SCALING_RESULT' not in text  # the workers' lines are parsed, not echoed
    assert 'Traceback' not in text


def test_the_slowest_of_independent_steps_is_its_expectation_over_every_pairing():
    """[1, 3] against [2, 2] ms: the slower of each pairing is 2 or 3, so 2.5 on average; equal
    steps cost nothing; three workers of [1, 2]: only (1, 1, 1) of 8 draws is 1, so 15/8."""
    code = ('import sys; sys.path.insert(0, %r); import benchmark_scaling as b; '
            'print(b.expected_slowest([[1, 3], [2, 2]]), b.expected_slowest([[5, 5], [5]]), '
            'b.expected_slowest([[1, 2]] * 3))' % os.path.dirname(SCRIPT))
    out = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert out.stdout.split()[-3:] == ['2.5', '5.0', '1.875'], out.stdout


@pytest.mark.parametrize('flag', ['--workers=1', '--trace_steps=-1'])
def test_bad_flag_is_one_error_line(tmp_path, flag):
    out = run([flag], tmp_path, timeout=120)
    assert out.returncode == 1
    assert out.stdout.strip().splitlines()[-1].startswith('error: ' + flag)
    assert 'Traceback' not in out.stdout
