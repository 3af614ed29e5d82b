"""initialization.sh: the Ascend environment, then exactly one run_sh.py command (recorded by a
stand-in interpreter; run_sh.py itself is tested in test_run_sh.py)."""

import os
import subprocess

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'initialization.sh')


def run(tmp_path, args=(), **env):
    """Run initialization.sh with PYTHON = a recorder: returns (exit code, stderr, calls, env seen)."""
    log = tmp_path / 'calls.txt'
    recorder = tmp_path / 'python'
    recorder.write_text('#!/usr/bin/env bash\nprintf "%%s\\n" "$*" >> %s\n'
                        'env | grep -E "^(ASCEND_|ML_DATA=|PYTHONUNBUFFERED=)" | sort > %s.env\n'
                        % (log, log))
    recorder.chmod(0o755)
    full_env = dict(os.environ, PYTHON=str(recorder), **env)
    proc = subprocess.run(['bash', SCRIPT] + list(args), env=full_env, capture_output=True,
                          text=True, cwd=str(tmp_path))
    calls = log.read_text().splitlines() if log.exists() else []
    seen = (tmp_path / 'calls.txt.env').read_text().splitlines() if calls else []
    return proc.returncode, proc.stderr, calls, seen


def test_the_job_is_one_run_sh_command_with_the_ascend_environment(tmp_path):
    code, err, calls, seen = run(
        tmp_path, ['--data_url=obs://b/data', '--train_url=obs://b/out', '--arch=smallconv'],
        PIP_INSTALL='1', ML_DATA='/cache/d', EPOCHS='3', REALMIX_FLAGS='--tsa=linear_schedule --percent_mask=0.3')
    assert code == 0, err
    assert calls == [
        '-m pip install --quiet -r %s/requirements-ascend.txt' % ROOT,
        '%s/run_sh.py --data_url=obs://b/data --train_url=obs://b/out --dataset=cifar10 --seed=1 '
        '--label_size=250 --valid_size=500 --epochs=3 --device=npu --precision=mixed '
        '--train_dir=/cache/experiments --sync_every_s=10 --tsa=linear_schedule '
        '--percent_mask=0.3 --arch=smallconv' % ROOT]
    assert seen == ['ASCEND_GLOBAL_EVENT_ENABLE=0', 'ASCEND_GLOBAL_LOG_LEVEL=3',
                    'ASCEND_SLOG_PRINT_TO_STDOUT=0', 'ML_DATA=/cache/d', 'PYTHONUNBUFFERED=1']


def test_placeholder_urls_and_stray_arguments_are_one_line_errors(tmp_path):
    code, err, calls, _ = run(tmp_path, PIP_INSTALL='0')
    assert code == 1 and calls == []
    assert err.strip().count('\n') == 0 and 'YOUR-BUCKET' in err and 'placeholder' in err
    code, err, calls, _ = run(tmp_path, ['cifar10'], DATA_URL='/d', TRAIN_URL='/t', PIP_INSTALL='0')
    assert code == 1 and calls == []
    assert err.strip() == "error: unexpected argument 'cifar10': write flags as --name=value"
