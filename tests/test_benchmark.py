"""scripts/benchmark.py: speed lines for every setting, and --profile's trace and op-type table."""

import json
import os
import re
import subprocess
import sys

from conftest import ROOT


def test_profile_writes_a_trace_and_ranks_op_types(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'), '--arch=smallconv',
         '--filters=8', '--batch=8', '--steps=2', '--warmup=1', '--repeats=1', '--device=cpu',
         '--modes=pipeline', '--profile=' + str(tmp_path)],
        env=dict(os.environ, ML_DATA=str(tmp_path), CUDA_VISIBLE_DEVICES=''),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert out.returncode == 0, out.stdout
    assert re.search(r'fp32 +pipeline +[\d.]+ img/s', out.stdout)
    with open(str(tmp_path / 'fp32_pipeline.trace.json')) as f:
        events = json.load(f)['traceEvents']
    assert any('Conv2D' in e.get('args', {}).get('op', '') for e in events)
    rows = re.findall(r'^  (\S+) +([\d.]+) ms +([\d.]+) %$', out.stdout, re.M)
    assert 3 <= len(rows) <= 10
    kinds = [kind for kind, _, _ in rows]
    assert len(set(kinds)) == len(kinds)
    shares = [float(share) for _, _, share in rows]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.5
    # The table is the trace's own account: each row's time is the sum of its kernel's events.
    traced = {}
    for event in events:
        if event.get('ph') == 'X' and event.get('cat') == 'Op':
            op = event['args']['op']
            traced[op] = traced.get(op, 0) + event['dur'] / 1000.
    for kind, ms, _ in rows:
        assert abs(traced[kind] - float(ms)) <= 0.01, (kind, ms, traced[kind])
    assert sorted(traced.values(), reverse=True)[:len(rows)] == [traced[k] for k in kinds]
    # A training step's costliest work includes the convolutions (forward or backward).
    assert any('Conv2D' in kind for kind in kinds)
    assert 'mlir_graph_optimization_pass' not in out.stdout
