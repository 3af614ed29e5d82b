"""experiment.py: a tiny two-arm study end to end, rerun skipping, study plans, --prepare data."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

import tiny_data
from conftest import ROOT
from libml import names, records
from libml.utils import UserError

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import experiment  # noqa: E402

SCRIPT = os.path.join(ROOT, 'scripts', 'experiment.py')
TINY = ['--arch=smallconv', '--filters=8', '--batch=8', '--tune_kimg=0', '--eval_batch=16',
        '--device=cpu', '--seed=1', '--ema=0.9', '--w_match=1']
ARMS = ['supervised', 'realmix']


def run_experiment(args, ml_data):
    env = dict(os.environ, ML_DATA=ml_data, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, SCRIPT] + args, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """An ad-hoc study of two arms at 2 kimg on the tiny dataset, run once."""
    root = str(tmp_path_factory.mktemp('data'))
    folder = str(tmp_path_factory.mktemp('study'))
    args = ['--study_dir=' + folder, '--dataset=%s-12' % tiny_data.make_ssl_dataset(root),
            '--arms=' + ','.join(ARMS), '--train_kimg=2', '--report_kimg=1', '--'] + TINY
    result = run_experiment(args, root)
    assert result.returncode == 0, result.stdout
    return dict(root=root, folder=folder, args=args, output=result.stdout)


def read(path):
    with open(path) as f:
        return f.read()


def table_rows(folder):
    return [line.split('|')[1:-1] for line in read(os.path.join(folder, 'results.md')).splitlines()
            if line.startswith('| ') and not line.startswith('| arm ')]


def test_results_table_has_a_row_per_arm_with_the_final_ema_accuracy(study):
    rows = table_rows(study['folder'])
    assert [row[0].strip() for row in rows] == ARMS
    for row in rows:
        arm, labels, budget, accuracy, wall, speed = [cell.strip() for cell in row]
        record = json.loads(read(os.path.join(study['folder'], 'arms', arm, 'arm.json')))
        stats = json.loads(read(os.path.join(record['run_dir'], 'stats.json')))
        assert stats['step'] == 2048 and record['images_trained'] == 2048
        assert (labels, budget) == ('12', '2')
        assert float(accuracy) == pytest.approx(stats['table']['ema']['test'], abs=0.01)
        assert wall.count(':') == 2 and float(speed) > 0
    # The run folder sits under the arm's own train_dir.
    assert record['run_dir'].startswith(os.path.join(study['folder'], 'arms', 'realmix') + os.sep)


def test_curves_and_exact_commands_are_written(study):
    with Image.open(os.path.join(study['folder'], 'curves.png')) as image:
        assert image.format == 'PNG' and image.size[0] > 500
    commands = read(os.path.join(study['folder'], 'commands.txt'))
    for arm, flags in (('supervised', '--method=supervised'),
                       ('realmix', '--method=realmix --tsa=linear_schedule --percent_mask=0.3')):
        line = [l for l in commands.splitlines() if '--train_dir=%s' % os.path.join(
            study['folder'], 'arms', arm) in l]
        assert len(line) == 1 and flags in line[0] and line[0].endswith(' '.join(TINY))
        assert '--train_kimg=2 --report_kimg=1 --warmup_kimg=0.5' in line[0]


def test_rerun_skips_finished_arms_and_keeps_their_timing(study):
    stats = [os.path.join(json.loads(read(os.path.join(study['folder'], 'arms', arm, 'arm.json')))
                          ['run_dir'], 'stats.json') for arm in ARMS]
    before = [os.stat(path).st_mtime_ns for path in stats]
    rows_before = table_rows(study['folder'])
    result = run_experiment(study['args'], study['root'])
    assert result.returncode == 0, result.stdout
    assert result.stdout.count('finished earlier (2048 images), skipped') == 2
    assert 'Epoch' not in result.stdout
    assert [os.stat(path).st_mtime_ns for path in stats] == before
    assert table_rows(study['folder']) == rows_before  # wall time and img/s still reported
    commands = read(os.path.join(study['folder'], 'commands.txt'))
    assert commands.count('finished earlier, skipped this time') == 2


def test_a_changed_command_is_not_finished(study):
    plan = experiment.resolve_study(study_dir=study['folder'], dataset='tiny.1@12-12',
                                    arms=ARMS, train_kimg=2, report_kimg=1)
    same, changed = plan.arm_plans(TINY), plan.arm_plans(TINY[:-1])
    assert experiment.is_finished(same[1], 2048)
    assert not experiment.is_finished(changed[1], 2048)
    assert not experiment.is_finished(same[1], 4096)


def test_missing_dataset_names_the_command_that_creates_it(tmp_path, monkeypatch):
    monkeypatch.setenv('ML_DATA', str(tmp_path))
    ad_hoc = experiment.resolve_study(study_dir=str(tmp_path / 's'), dataset='none.1@10-0',
                                      arms=['realmix'], train_kimg=2)
    with pytest.raises(UserError, match='create_datasets.py none'):
        experiment.check_dataset(ad_hoc)
    with pytest.raises(UserError, match='not ready; rerun with --prepare'):
        experiment.check_dataset(experiment.resolve_study('cifar10_4000'))


def test_builtin_studies_plan_their_arms():
    for name in experiment.STUDIES:
        study = experiment.resolve_study(name)
        commands = [' '.join(arm.command) for arm in study.arm_plans()]
        assert len(commands) == len(study.arms) * len(study.seeds) and study.arms
        assert study.warmup_kimg == experiment.STUDIES[name].get('warmup_kimg', study.train_kimg / 4.)
        recipe = study.prepare
        if recipe is None:  # data made by hand (digits_methods: docs/studies.md)
            assert name == 'digits_methods' and len(study.arms) == 10
            continue
        classes = len(recipe.get('class_filter', '0,1,2,3,4,5,6,7,8,9').split(','))
        assert study.labels == recipe['split_size'] * classes // 10  # labels column is true
    cifar10 = experiment.resolve_study('cifar10_4000')
    assert cifar10.dataset == 'cifar10.1@4000-500' and cifar10.arms == ['supervised', 'realmix']
    assert '--precision=mixed' in cifar10.flags
    mismatch = experiment.resolve_study('cifar6_mismatch100', train_kimg=4)
    assert mismatch.prepare['unlabel_filter'] == '0,1,8,9'
    assert (mismatch.report_kimg, mismatch.warmup_kimg) == (4, 1.)
    realmix = mismatch.arm_plans()[2].command
    assert '--tsa=linear_schedule' in realmix and '--percent_mask=0.3' in realmix
    seed = experiment.resolve_study('cifar10_250')
    assert seed.dataset == 'cifar10.1@250-500' and seed.train_kimg >= 128
    assert seed.warmup_kimg == seed.train_kimg  # the short-budget warm-up the earlier studies found
    assert seed.arms == ['supervised', 'realmix_tsa', 'realmix_tsa_definition', 'mixmatch']
    reference, definition = [[a for a in arm.command if not a.startswith('--train_dir=')]
                             for arm in seed.arm_plans()[1:3]]
    assert set(reference) ^ set(definition) == {'--tsa_rule=reference', '--tsa_rule=definition'}
    assert '--percent_mask=-1' in reference  # the reference's recommended CIFAR-10 command


def test_a_study_over_three_splits_runs_each_arm_on_each_and_reports_median_and_range(tmp_path):
    study = experiment.resolve_study('digits_methods_3splits', study_dir=str(tmp_path))
    assert study.seeds == [1, 2, 3] and study.arms[-3:] == ['fixmatch', 'flexmatch', 'freematch']
    plans = study.arm_plans()
    assert [(arm.name, arm.seed) for arm in plans[:4]] == [
        ('fs_baseline', 1), ('fs_baseline', 2), ('fs_baseline', 3), ('fs_mixup', 1)]
    for arm in plans[:3]:
        assert '--dataset=digits.%d@50-0' % arm.seed in arm.command
        assert arm.folder == os.path.join(str(tmp_path), 'arms', 'fs_baseline', 'seed%d' % arm.seed)
    assert study.prepare == dict(source='digits', split_size=50, class_balance=True)
    one = experiment.resolve_study('digits_methods_3splits', seeds=['2'], study_dir=str(tmp_path))
    assert [arm.folder for arm in one.arm_plans()[:1]] == [
        os.path.join(str(tmp_path), 'arms', 'fs_baseline')]  # one split: the old layout
    done = []
    for arm, accuracy in zip(plans[:6], (80., 90., 85., 70., 71., 75.)):
        run_dir = str(tmp_path / arm.name / str(arm.seed))
        os.makedirs(run_dir)
        with open(os.path.join(run_dir, 'stats.json'), 'w') as f:
            json.dump(dict(table=dict(ema=dict(test=accuracy))), f)
        done.append((arm, dict(run_dir=run_dir, wall_s=60., images_trained=6000), 'ran'))
    text = experiment.results_markdown(study, done)
    assert 'on the splits of seeds 1, 2, 3' in text
    assert '| fs_baseline | 50 | 128 | 85.00 | 80.00–90.00 | 80.00, 90.00, 85.00 | 0:03:00 | 100.0 |' in text
    assert '| fs_mixup | 50 | 128 | 71.00 | 70.00–75.00 | 70.00, 71.00, 75.00 |' in text
    with pytest.raises(UserError, match='--seeds: give distinct split seeds'):
        experiment.resolve_study('digits_methods_3splits', seeds=['1', '1'])


def test_prepare_builds_digits_and_a_class_balanced_split_per_seed(tmp_path, monkeypatch):
    monkeypatch.setenv('ML_DATA', str(tmp_path))
    study = experiment.resolve_study('digits_methods_3splits', seeds=['1', '2'])
    log = []
    for seed in study.seeds:
        experiment.prepare_data(study.dataset_of(seed), study.prepare, None, log)
    assert log[0] == 'python scripts/create_datasets.py digits' and len(log) == 3
    assert '--seed=2 --label_split_size=50 --class_balance' in log[2]
    labeled = [sorted(labels_of('SSL/digits.%d@50' % seed, 'label')) for seed in (1, 2)]
    assert labeled[0] == labeled[1] == sorted(list(range(10)) * 5)  # 5 per class
    assert labels_of('SSL/digits.1@50', 'label') != labels_of('SSL/digits.2@50', 'label')


@pytest.mark.parametrize('kwargs,message', [
    (dict(name='nope'), 'unknown; choose one of'),
    (dict(name='cifar10_4000', dataset='x.1@2-0'), 'applies to ad-hoc studies'),
    (dict(study_dir='s', dataset='x.1@2-0', arms=['realmix']), 'give --study=NAME'),
    (dict(study_dir='s', dataset='x.1@2-0', arms=['realmix', 'realmix'], train_kimg=2), 'distinct'),
    (dict(study_dir='s', dataset='x.1@2-0', arms=['p'], train_kimg=2,
          arm_flags={'p': ['--train_kimg=9']}), '--train_kimg=9 is set by the study'),
])
def test_bad_study_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        experiment.resolve_study(**kwargs)


def make_image_archive(path):
    """A .tar.gz of train/<class>/ (4 images) and test/<class>/ (1 image) for 10 classes."""
    folder = os.path.dirname(path)
    rng = np.random.RandomState(0)
    for part, count in (('train', 4), ('test', 1)):
        for c in range(10):
            os.makedirs(os.path.join(folder, 'images', part, 'c%d' % c))
            for i in range(count):
                Image.fromarray(rng.randint(0, 255, (8, 8, 3)).astype(np.uint8)).save(
                    os.path.join(folder, 'images', part, 'c%d' % c, '%d.png' % i))
    with tarfile.open(path, 'w:gz') as tar:
        for part in ('train', 'test'):
            tar.add(os.path.join(folder, 'images', part), part)
    return path


def labels_of(name, part):
    return [label for _, _, label in records.read_records(names.dataset_path(name, part))]


def test_prepare_builds_a_class_mismatch_split_from_an_image_archive(tmp_path, monkeypatch):
    """Archive -> dataset -> split -> CIFAR-6-style 100% mismatch split; a rerun does nothing."""
    ml_data = str(tmp_path / 'data')
    monkeypatch.setenv('ML_DATA', ml_data)
    archive = make_image_archive(str(tmp_path / 'images.tar.gz'))
    recipe = dict(source='toy', split_size=20, class_filter='2,3,4,5,6,7', unlabel_filter='0,1,8,9')
    log = []
    experiment.prepare_data('toy6.1@12-0', recipe, archive, log)
    assert [line.split()[1] for line in log if not line.startswith('#')] == [
        'scripts/create_datasets.py', 'scripts/create_split.py', 'scripts/filter_dataset.py']
    assert '--unlabel_filter=0,1,8,9 --remap' in log[-1]
    assert sorted(labels_of('SSL/toy6.1@12', 'label')) == sorted(list(range(6)) * 2)
    # 100% mismatch: the unlabeled images come only from classes 0, 1, 8, 9 (label -1 now).
    assert labels_of('SSL/toy6.1@12', 'unlabel') == [-1] * 8
    assert sorted(labels_of('toy6', 'test')) == list(range(6))
    assert [d for d in os.listdir(ml_data) if d.startswith('.')] == []  # extraction cleaned up
    again = []
    experiment.prepare_data('toy6.1@12-0', recipe, archive, again)
    assert again == []  # everything present: nothing runs


def test_prepare_builds_the_data_and_stops_and_the_study_then_names_what_it_built(tmp_path):
    ml_data, folder = str(tmp_path / 'data'), str(tmp_path / 'study')
    studies = str(tmp_path / 'studies.json')
    with open(studies, 'w') as f:
        json.dump({'toy_study': dict(dataset='toy.1@20-0', arms=['supervised'], train_kimg=1,
                                     prepare=dict(source='toy', split_size=20))}, f)
    archive = make_image_archive(str(tmp_path / 'images.tar.gz'))
    args = ['--study=toy_study', '--studies_file=' + studies, '--study_dir=' + folder]
    result = run_experiment(args + ['--prepare', '--images=' + archive], ml_data)
    assert result.returncode == 0, result.stdout
    assert os.path.isfile(os.path.join(ml_data, 'SSL', 'toy.1@20-label.tfrecord'))
    assert not os.path.exists(os.path.join(folder, 'arms'))  # no arm trained
    assert result.stdout.rstrip().endswith('python scripts/experiment.py %s' % ' '.join(args))
    again = run_experiment(args + ['--prepare', '--images=' + archive], ml_data)
    assert 'dataset toy.1@20-0 is ready (it was already there)' in again.stdout
    commands = experiment.commands_text(experiment.resolve_study(
        'toy_study', experiment.load_studies(studies), folder), [])
    assert 'scripts/create_split.py --seed=1 --label_split_size=20' in commands


def test_the_study_command_after_prepare_drops_only_what_prepare_reads():
    assert experiment.study_arguments(['--study=s', '--prepare', '--images', 'a.tgz', '--train_kimg=8',
                                       '--images=b', '--', '--prepare=x']) == [
        '--study=s', '--train_kimg=8', '--', '--prepare=x']


def test_prepare_from_missing_images_is_one_line_and_writes_nothing(tmp_path):
    ml_data = str(tmp_path / 'data')
    result = run_experiment(['--study=cifar6_mismatch0', '--prepare', '--dry_run',
                             '--images=' + str(tmp_path / 'nope.tar.gz')], ml_data)
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith('error: ')] == [
        'error: --images=%s: no such archive or folder; give the CIFAR-10 JPEG archive or a '
        'folder with train/<class>/ and test/<class>/' % (tmp_path / 'nope.tar.gz')]
    assert not os.path.exists(ml_data) or os.listdir(ml_data) == []


def test_a_killed_arm_resumes_from_its_checkpoint(tmp_path):
    import glob
    import signal
    import time
    root = str(tmp_path / 'data')
    folder = str(tmp_path / 'study')
    args = ['--study_dir=' + folder, '--dataset=%s-12' % tiny_data.make_ssl_dataset(root),
            '--arms=realmix', '--train_kimg=3', '--report_kimg=1', '--'] + TINY
    env = dict(os.environ, ML_DATA=root, CUDA_VISIBLE_DEVICES='')
    first = subprocess.Popen([sys.executable, SCRIPT] + args, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while not glob.glob(os.path.join(folder, 'arms', 'realmix', '*', '*', 'tf', 'checkpoint')):
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the study and its realmix.py, mid-arm
    first.wait()
    result = run_experiment(args, root)
    assert result.returncode == 0, result.stdout
    assert 'Resumed from' in result.stdout and 'Epoch 1/3' not in result.stdout.split('Resumed from')[1]
    record = json.loads(read(os.path.join(folder, 'arms', 'realmix', 'arm.json')))
    assert record['step'] == 3072 and 0 < record['images_trained'] < 3072  # img/s of the resumed part
