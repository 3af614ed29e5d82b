#!/usr/bin/env python
"""Run a study: several realmix.py arms on one dataset and budget, then a table and curves.

    python scripts/experiment.py --study=cifar10_4000 --prepare    # the data only, then it stops
    python scripts/experiment.py --study=cifar10_4000              # the study's arms
    python scripts/experiment.py --study_dir=/tmp/s --dataset=digits.1@100-0 \\
        --arms=supervised,mixmatch,realmix --train_kimg=16 -- --arch=smallconv

Every arm runs as `realmix.py --train_dir=STUDY_DIR/arms/ARM`; flags after `--` go to every arm.
With several split seeds (--seeds=1,2,3) each arm runs once per split (STUDY_DIR/arms/ARM/seedS)
and the table gives the median and range over the splits.
Writes STUDY_DIR/results.md, curves.png and commands.txt; a rerun skips the finished arms.
--prepare builds the study's dataset and split (what is missing) and stops, training nothing.
"""

import codecs
import collections
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, ROOT)
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import tensorflow.compat.v1 as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import create_datasets  # noqa: E402  (sibling scripts, for --prepare and the curves)
import create_split  # noqa: E402
import filter_dataset  # noqa: E402
import plot_curves  # noqa: E402
from libml import data, names, records, run_folder  # noqa: E402
from libml.utils import UserError, cli_main, ml_data_dir, write_text_atomic  # noqa: E402

FLAGS = flags.FLAGS
REALMIX = os.path.join(ROOT, 'realmix.py')
DEFAULT_IMAGES = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10-jpeg.tar.gz')

# The arms every study can name: realmix.py flags on top of the study's common flags.
ARMS = collections.OrderedDict([
    ('supervised', ['--method=supervised']),
    ('mixmatch', ['--method=realmix', '--tsa=none', '--percent_mask=-1']),
    ('realmix', ['--method=realmix', '--tsa=linear_schedule', '--percent_mask=0.3']),
    ('realmix_definition', ['--method=realmix', '--tsa=linear_schedule', '--percent_mask=0.3',
                            '--tsa_rule=definition']),
])
# Budgets are in kimg (1024 labeled images). On this 2-core CPU WRN-28-2 trains RealMix at about
# 20 img/s in mixed precision (64 kimg ~ 1 hour); the CIFAR-6 studies use a 16-filter, 2-block
# network (~120 img/s RealMix, ~370 img/s supervised). The tables and curves use the EMA row, so
# the studies skip the tuned-BN rows (--tune_kimg=0), which would double every evaluation.


# Budgets of a few thousand steps need faster moving averages than the defaults (0.999), or the
# EMA weights and batch-norm statistics still remember the initialisation when evaluated.
SHORT_SCHEDULE_FLAGS = ['--ema=0.99', '--bn_momentum=0.99']


def cifar6_mismatch(name, unlabeled_classes):
    """CIFAR-6 protocol (docs/design.md section 3): 400 labels in each animal class 2-7, unlabeled
    images from four classes; no validation set, since at 100% mismatch none has a label."""
    return dict(dataset='%s.1@2400-0' % name, arms=['supervised', 'mixmatch', 'realmix'],
                train_kimg=128, report_kimg=8,
                flags=['--filters=16', '--repeat=2', '--precision=mixed', '--tune_kimg=0']
                + SHORT_SCHEDULE_FLAGS,
                prepare=dict(source='cifar10', split_size=4000, class_filter='2,3,4,5,6,7',
                             unlabel_filter=unlabeled_classes))


# Every --method, with the MixMatch paper's table-5 CIFAR-10 flags (runs/table5.sh).
METHOD_ARMS = collections.OrderedDict([
    ('fs_baseline', ['--method=fs_baseline']),
    ('fs_mixup', ['--method=fs_mixup']),
    ('pi_model', ['--method=pi_model', '--consistency_weight=20']),
    ('mean_teacher', ['--method=mean_teacher', '--wd=0.2', '--consistency_weight=50']),
    ('pseudo_label', ['--method=pseudo_label', '--consistency_weight=1']),
    ('vat', ['--method=vat']),
    ('ict', ['--method=ict', '--beta=0.75', '--consistency_weight=1000']),
    ('mixup', ['--method=mixup', '--beta=0.75']),
    ('mixmatch', ['--method=mixmatch', '--beta=0.75', '--w_match=75']),
    ('realmix', ['--method=realmix', '--tsa=linear_schedule', '--percent_mask=0.3']),
])
# The FixMatch family at google-research/fixmatch's defaults (lr 0.03, wd 5e-4, uratio 7,
# confidence 0.95) and USB's for FlexMatch and FreeMatch.
FIXMATCH_ARMS = collections.OrderedDict(
    (name, ['--method=' + name]) for name in ('fixmatch', 'flexmatch', 'freematch'))

def cifar10_250_small(**study):
    """The seed's setting (CIFAR-10, 250 labels) at 128 kimg on cifar10_250's small network."""
    return dict(dict(dataset='cifar10.1@250-500', train_kimg=128, report_kimg=16, warmup_kimg=128,
                     flags=['--precision=mixed', '--tune_kimg=0', '--filters=16', '--repeat=2']
                     + SHORT_SCHEDULE_FLAGS, prepare=dict(source='cifar10', split_size=250)),
                **study)


STUDIES = {
    'cifar10_4000': dict(
        dataset='cifar10.1@4000-500', arms=['supervised', 'realmix'], train_kimg=64, report_kimg=8,
        flags=['--precision=mixed', '--tune_kimg=0'] + SHORT_SCHEDULE_FLAGS,
        prepare=dict(source='cifar10', split_size=4000)),
    # The seed's setting (250 labels) and the reference's recommended CIFAR-10 command: TSA with
    # the linear schedule, no OOD masking (CIFAR-10 has no class mismatch); the two TSA rules
    # differ in nothing else. Warm-up over the whole budget: at 64 kimg the earlier studies found
    # a quarter-budget warm-up collapses the labeled fit (docs/results/).
    'cifar10_250': dict(
        dataset='cifar10.1@250-500',
        arms=['supervised', 'realmix_tsa', 'realmix_tsa_definition', 'mixmatch'],
        arm_flags={'realmix_tsa': ['--method=realmix', '--tsa=linear_schedule', '--tsa_rule=reference',
                                   '--percent_mask=-1'],
                   'realmix_tsa_definition': ['--method=realmix', '--tsa=linear_schedule',
                                              '--tsa_rule=definition', '--percent_mask=-1']},
        train_kimg=128, report_kimg=16, warmup_kimg=128,
        flags=['--precision=mixed', '--tune_kimg=0'] + SHORT_SCHEDULE_FLAGS,
        prepare=dict(source='cifar10', split_size=250)),
    # Every method of the reference on one split and budget, each with its table-5 (MixMatch
    # paper) CIFAR-10 settings where it has them (docs/training.md); one seed. Its data:
    # create_datasets.py digits; create_split.py --seed=1 --label_split_size=50 --class_balance.
    'digits_methods': dict(
        dataset='digits.1@50-0', arms=list(METHOD_ARMS), arm_flags=METHOD_ARMS,
        train_kimg=128, report_kimg=16, warmup_kimg=32,
        flags=['--filters=16', '--repeat=1', '--tune_kimg=0', '--seed=1'] + SHORT_SCHEDULE_FLAGS),
    # Every method, the FixMatch family too, on three splits (seeds 1-3): the median and range.
    'digits_methods_3splits': dict(
        dataset='digits.1@50-0', seeds=[1, 2, 3],
        arms=list(METHOD_ARMS) + list(FIXMATCH_ARMS),
        arm_flags=collections.OrderedDict(list(METHOD_ARMS.items()) + list(FIXMATCH_ARMS.items())),
        train_kimg=128, report_kimg=16, warmup_kimg=32,
        flags=['--filters=16', '--repeat=1', '--tune_kimg=0', '--seed=1'] + SHORT_SCHEDULE_FLAGS,
        prepare=dict(source='digits', split_size=50, class_balance=True)),
    # The FixMatch family beside RealMix, MixMatch and the baseline at the seed's setting, on the
    # small network of cifar10_250. The FixMatch family at --uratio=1: 192 images through the
    # network a step, as MixMatch and RealMix (64 labeled + 2 x 64 unlabeled), so every arm costs
    # about the same; at its default 7 (960 a step) an arm takes ~5x longer, beyond a 2-core CPU.
    'cifar10_250_fixmatch': cifar10_250_small(
        seeds=[1, 2, 3], arms=['supervised'] + list(FIXMATCH_ARMS) + ['mixmatch', 'realmix_tsa'],
        arm_flags=collections.OrderedDict(
            [('realmix_tsa', ['--method=realmix', '--tsa=linear_schedule', '--percent_mask=-1'])]
            + [(name, flags + ['--uratio=1']) for name, flags in FIXMATCH_ARMS.items()])),
    # What --uratio=1 costs FixMatch there: its default 7 on one split (about 5x the time).
    'cifar10_250_fixmatch_uratio7': cifar10_250_small(arms=['fixmatch'], arm_flags=FIXMATCH_ARMS),
    'cifar6_mismatch0': cifar6_mismatch('cifar6_mm0', '4,5,6,7'),
    'cifar6_mismatch100': cifar6_mismatch('cifar6_mm100', '0,1,8,9'),
}
WARMUP_FRACTION = 0.25  # warm-up of w_match, as a share of a (short) study budget
BUDGET_FLAGS = ('dataset', 'train_dir', 'train_kimg', 'report_kimg', 'warmup_kimg', 'epochs')


def define_flags():
    flags.DEFINE_string('study', None, 'Named study: %s (or one of --studies_file).'
                        % ', '.join(sorted(STUDIES)))
    flags.DEFINE_string('studies_file', None, 'JSON {name: {dataset, arms, train_kimg, '
                        'report_kimg, flags, arm_flags, prepare}} with more studies.')
    flags.DEFINE_string('study_dir', None, 'Output folder (default experiments/studies/STUDY).')
    flags.DEFINE_string('dataset', None, 'Ad-hoc study: dataset id NAME.SEED@SIZE-VALID.')
    flags.DEFINE_list('arms', None, 'Arms to run, in order: %s or --arm_flags names.'
                      % ', '.join(ARMS))
    flags.DEFINE_multi_string('arm_flags', [], 'Define an arm: NAME=REALMIX FLAGS, e.g. '
                              '"p50=--method=realmix --tsa=linear_schedule --percent_mask=0.5".')
    flags.DEFINE_integer('train_kimg', None, 'Budget per arm in kimg (1024 labeled images).')
    flags.DEFINE_integer('report_kimg', None, 'Evaluation period in kimg (default budget / 8).')
    flags.DEFINE_float('warmup_kimg', None, 'w_match warm-up in kimg (default budget / 4).')
    flags.DEFINE_list('seeds', None, 'Split seeds: each arm runs on the split of each (the dataset '
                      'id\'s SEED replaced); default the study\'s seeds, else the id\'s one.')
    flags.DEFINE_bool('prepare', False, 'Only build the study\'s dataset and split (what is '
                      'missing), then stop; the same command without --prepare runs the study.')
    flags.DEFINE_string('images', DEFAULT_IMAGES, '--prepare: archive (.tar.gz) or folder holding '
                        'train/<class>/ and test/<class>/ image folders.')
    flags.DEFINE_bool('dry_run', False, 'Print the arm commands and stop before training (with '
                      '--prepare: after preparing the data).')


# ---------------------------------------------------------------------------------------------
# The plan: what each arm runs.

Arm = collections.namedtuple('Arm', 'name seed folder command')


class Study(collections.namedtuple('Study', 'name folder dataset arms train_kimg report_kimg '
                                            'warmup_kimg flags arm_flags prepare seeds')):
    """A resolved study: every arm's realmix.py command (one per split seed) and where its run
    lands."""

    @property
    def planned_images(self):
        return self.train_kimg << 10

    @property
    def labels(self):
        return names.parse_dataset_id(self.dataset)[2]

    def dataset_of(self, seed):
        """The study's dataset id on the split of `seed`."""
        name, _, size, valid = names.parse_dataset_id(self.dataset)
        return names.dataset_id(name, seed, size, valid)

    def budget_flags(self, seed):
        epochs = -(-self.train_kimg // self.report_kimg)  # never cut the budget short
        return ['--dataset=' + self.dataset_of(seed), '--train_kimg=%d' % self.train_kimg,
                '--report_kimg=%d' % self.report_kimg, '--warmup_kimg=%g' % self.warmup_kimg,
                '--epochs=%d' % epochs]

    def arm_plans(self, passthrough=()):
        """[Arm] in order (arm by arm, split by split): budget flags, study flags, arm flags, then
        pass-through flags. One split: STUDY_DIR/arms/ARM; several: STUDY_DIR/arms/ARM/seedS."""
        plans = []
        for name in self.arms:
            for seed in self.seeds:
                folder = os.path.join(self.folder, 'arms', name)
                if len(self.seeds) > 1:
                    folder = os.path.join(folder, 'seed%d' % seed)
                command = ([sys.executable, REALMIX] + self.budget_flags(seed)
                           + ['--train_dir=' + folder] + list(self.flags)
                           + list(self.arm_flags[name]) + list(passthrough))
                plans.append(Arm(name, seed, folder, command))
        return plans


def flag_name(arg):
    return arg.lstrip('-').split('=', 1)[0]


def check_flag_list(args, where, forbidden):
    """UserError when `args` is not all --flags or sets one the study controls."""
    for arg in args:
        if not arg.startswith('--'):
            raise UserError('%s: %r is not a --flag; give realmix.py flags like --filters=16'
                            % (where, arg))
        if flag_name(arg) in forbidden:
            raise UserError('%s: %s is set by the study; use experiment.py\'s --%s or a study '
                            'definition instead' % (where, arg, flag_name(arg)))


def parse_arm_flags(definitions):
    """{name: [flags]} from NAME=FLAGS strings."""
    arms = collections.OrderedDict()
    for text in definitions:
        name, _, value = text.partition('=')
        if not re.match(r'^[A-Za-z0-9_]+$', name) or not value.strip():
            raise UserError('--arm_flags=%s: write NAME=FLAGS, e.g. "p50=--method=realmix '
                            '--percent_mask=0.5"' % text)
        arms[name] = shlex.split(value)
    return arms


def load_studies(studies_file):
    """The built-in studies plus those of a JSON file."""
    studies = dict(STUDIES)
    if not studies_file:
        return studies
    try:
        with open(studies_file) as f:
            extra = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError('--studies_file=%s: cannot read it as JSON (%s)' % (studies_file, e))
    if not (isinstance(extra, dict) and all(isinstance(v, dict) for v in extra.values())):
        raise UserError('--studies_file=%s: give a JSON object {name: {dataset, arms, train_kimg, '
                        '...}}' % studies_file)
    studies.update(extra)
    return studies


def _budget(spec, train_kimg, report_kimg, warmup_kimg):
    """(train, report, warm-up) kimg: command line first, then the study, then the defaults."""
    train_kimg = train_kimg or spec.get('train_kimg')
    if not train_kimg or train_kimg <= 0:
        raise UserError('--train_kimg: give a positive budget in kimg')
    report_kimg = report_kimg or min(spec.get('report_kimg') or max(1, train_kimg // 8), train_kimg)
    if report_kimg <= 0 or report_kimg > train_kimg:
        raise UserError('--report_kimg=%s: choose 1..%d (the budget)' % (report_kimg, train_kimg))
    if warmup_kimg is None:
        warmup_kimg = spec.get('warmup_kimg', train_kimg * WARMUP_FRACTION)
    return int(train_kimg), int(report_kimg), float(warmup_kimg)


def _arm_flags(spec, arms, arm_flags):
    """{arm: realmix.py flags} of the chosen arms, in order."""
    known = collections.OrderedDict(ARMS)
    known.update(spec.get('arm_flags', {}))
    known.update(arm_flags or {})
    arms = list(arms or spec.get('arms') or [])
    if not arms or len(set(arms)) != len(arms) or any(a not in known for a in arms):
        raise UserError('--arms=%s: give distinct arms from %s (or define one with --arm_flags)'
                        % (','.join(arms), ', '.join(known)))
    for arm in arms:
        check_flag_list(known[arm], 'arm %s' % arm, BUDGET_FLAGS)
    return collections.OrderedDict((a, list(known[a])) for a in arms)


def _seeds(spec, seeds, dataset):
    """The split seeds: command line first, then the study's, else the dataset id's."""
    seeds = seeds or spec.get('seeds') or [names.parse_dataset_id(dataset)[1]]
    try:
        seeds = [int(seed) for seed in seeds]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError('--seeds: give distinct split seeds >= 0, e.g. --seeds=1,2,3')
    return seeds


def resolve_study(name=None, studies=None, study_dir=None, dataset=None, arms=None,
                  arm_flags=None, train_kimg=None, report_kimg=None, warmup_kimg=None,
                  seeds=None):
    """A Study from a named definition and/or ad-hoc settings; UserError on anything missing."""
    spec = {}
    if name:
        studies = studies or STUDIES
        if name not in studies:
            raise UserError('--study=%s: unknown; choose one of %s'
                            % (name, ', '.join(sorted(studies))))
        if dataset:
            raise UserError('--dataset applies to ad-hoc studies; study %s fixes its dataset '
                            '(define another one with --studies_file)' % name)
        spec = studies[name]
    elif not (study_dir and dataset and arms and train_kimg):
        raise UserError('give --study=NAME, or for an ad-hoc study --study_dir, --dataset, --arms '
                        'and --train_kimg')
    dataset = dataset or spec.get('dataset')
    names.parse_dataset_id(dataset)
    common = list(spec.get('flags', []))
    check_flag_list(common, 'study flags', BUDGET_FLAGS + ('method',))
    chosen = _arm_flags(spec, arms, arm_flags)
    name = name or os.path.basename(os.path.normpath(study_dir))
    folder = os.path.abspath(study_dir or os.path.join('experiments', 'studies', name))
    return Study(name, folder, dataset, list(chosen),
                 *_budget(spec, train_kimg, report_kimg, warmup_kimg),
                 flags=common, arm_flags=chosen, prepare=spec.get('prepare'),
                 seeds=_seeds(spec, seeds, dataset))


# ---------------------------------------------------------------------------------------------
# Running commands.

def run_command(command):
    """Run a command, echoing its output as it comes; (exit status, output text, wall seconds)."""
    start = time.time()
    decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')  # chunks split characters
    texts = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        for chunk in iter(lambda: os.read(process.stdout.fileno(), 1 << 16), b''):
            texts.append(decoder.decode(chunk))
            sys.stdout.write(texts[-1])
            sys.stdout.flush()
        status = process.wait()
    return status, ''.join(texts) + decoder.decode(b'', final=True), time.time() - start


def shell_line(command):
    return ' '.join(shlex.quote(arg) for arg in command)


# ---------------------------------------------------------------------------------------------
# --prepare: dataset from image folders, split, class filter. The sibling scripts' functions run
# in this process (no TensorFlow start-up per step); `log` gets the equivalent command lines.

def split_exists(split):
    return os.path.isfile(names.dataset_path('SSL/' + split, 'label'))


def announce(log, what, script, args):
    """Announce a preparation step and log the command line that does the same."""
    log.append(shell_line(['python', 'scripts/' + script] + args))
    print('%s: %s' % (what, log[-1]))
    sys.stdout.flush()


def build_from_images(name, images, log):
    """create_datasets.py custom from train/ and test/ class folders (an archive is extracted)."""
    if os.path.isdir(images):
        train, test = os.path.join(images, 'train'), os.path.join(images, 'test')
        announce(log, 'building ' + name, 'create_datasets.py',
                 ['custom', '--name=' + name, '--traindir=' + train, '--testdir=' + test])
        create_datasets.build_custom(name, train, test, workers=os.cpu_count() or 1)
        return
    if not os.path.isfile(images):
        raise UserError('--images=%s: no such archive or folder; give the CIFAR-10 JPEG archive or '
                        'a folder with train/<class>/ and test/<class>/' % images)
    with create_datasets.extracted(images) as folder:
        log.append('# extracted %s into %s (deleted afterwards)' % (images, folder))
        build_from_images(name, folder, log)


def prepare_data(dataset_id, recipe, images, log):
    """Make what is missing of: the source dataset, its split, the class-filtered split.

    `recipe` = {source, split_size[, class_filter, unlabel_filter]}; the split is drawn with the
    dataset id's seed; a class filter makes the id's split from it (CIFAR-6 mismatch protocol).
    """
    name, seed, size, _ = names.parse_dataset_id(dataset_id)
    source_split = names.split_name(recipe['source'], seed, recipe['split_size'])
    target_split = names.split_name(name, seed, size)
    filtered = 'class_filter' in recipe
    if not filtered and target_split != source_split:
        raise UserError('study recipe: dataset %s is not the split %s of %s'
                        % (dataset_id, source_split, recipe['source']))
    if split_exists(target_split):
        return
    source_files = [names.dataset_path(recipe['source'], part) for part in ('train', 'test')]
    if not all(os.path.isfile(p) for p in source_files):
        if recipe['source'] == 'digits':  # scikit-learn's, bundled: no images to read
            announce(log, 'building digits', 'create_datasets.py', ['digits'])
            create_datasets.build_digits()
        else:
            build_from_images(recipe['source'], images, log)
    if not split_exists(source_split):
        target = os.path.join(ml_data_dir(), 'SSL', recipe['source'])
        balance = recipe.get('class_balance', False)
        announce(log, 'drawing split ' + source_split, 'create_split.py',
                 ['--seed=%d' % seed, '--label_split_size=%d' % recipe['split_size']]
                 + ['--class_balance'] * balance + [target, source_files[0]])
        create_split.create_split(target, [source_files[0]], seed, recipe['split_size'],
                                  class_balance=balance)
    if filtered:
        unlabel_filter = recipe.get('unlabel_filter', recipe['class_filter'])
        announce(log, 'filtering ' + target_split, 'filter_dataset.py',
                 ['--filter_dataset=SSL/' + source_split, '--save_name=SSL/' + target_split,
                  '--class_filter=' + recipe['class_filter'], '--unlabel_filter=' + unlabel_filter,
                  '--remap'])
        filter_dataset.filter_dataset('SSL/' + source_split, 'SSL/' + target_split,
                                      recipe['class_filter'], unlabel_filter, remap=True)
        check_label_count(target_split, size)


def check_label_count(split, size):
    """The results table reports the id's SIZE as the label count: make sure it is true."""
    path = names.dataset_path('SSL/' + split, 'label')
    count = sum(1 for _ in records.read_serialized(path))
    if count != size:
        raise UserError('%s holds %d labeled images, not the %d its name states; fix the study\'s '
                        'dataset id or split_size' % (path, count, size))


def check_dataset(study):
    """UserError (with the command that creates it) when the data of a split is missing."""
    for seed in study.seeds:
        try:
            data.resolve(study.dataset_of(seed))
        except UserError as e:
            if study.prepare:
                raise UserError('dataset %s is not ready; rerun with --prepare to build it (%s)'
                                % (study.dataset_of(seed), e))
            raise


# ---------------------------------------------------------------------------------------------
# Arms: skip the finished ones, run the rest, keep their timing.

def read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def arm_record_path(arm):
    return os.path.join(arm.folder, 'arm.json')


def run_step(run_dir):
    """Images seen at the run's last evaluation (stats.json), or None."""
    stats = read_json(run_folder.stats_path(run_dir)) if run_dir else None
    return stats and stats.get('step')


def is_finished(arm, planned_images):
    """The arm ran this very command and its run reached the planned number of images."""
    record = read_json(arm_record_path(arm))
    return bool(record and record['command'] == arm.command[1:]
                and run_step(record['run_dir']) == planned_images)


def run_arm(arm, planned_images):
    """Train one arm; accumulate wall time and images trained in ARM/arm.json."""
    status, output, wall = run_command(arm.command)
    write_text_atomic(os.path.join(arm.folder, 'log.txt'), output)
    if status:
        raise UserError('arm %s: realmix.py exited with status %d; its output is in %s'
                        % (arm.name, status, os.path.join(arm.folder, 'log.txt')))
    found = re.search(r'^Run folder (.+)$', output, re.M)
    step = run_step(found and found.group(1))
    if step != planned_images:
        raise UserError('arm %s: the run ended at %s images, not the planned %d; see %s'
                        % (arm.name, step, planned_images, os.path.join(arm.folder, 'log.txt')))
    resumed = re.search(r'^Resumed from .*-(\d+)$', output, re.M)
    trained = step - (int(resumed.group(1)) if resumed else 0)
    record = read_json(arm_record_path(arm)) or {}
    if record.get('run_dir') != found.group(1):
        record = {}  # Timing belongs to a run folder; a new folder starts from zero.
    record.update(arm=arm.name, command=arm.command[1:], run_dir=found.group(1), step=step,
                  wall_s=record.get('wall_s', 0.) + wall,
                  images_trained=record.get('images_trained', 0) + trained)
    write_text_atomic(arm_record_path(arm), json.dumps(record, indent=2) + '\n')
    return record


def run_arms(study, plans):
    """Run every unfinished arm; [(arm, record, 'ran' or 'skipped')]."""
    done = []
    for arm in plans:
        if is_finished(arm, study.planned_images):
            print('arm %s (split seed %d): finished earlier (%d images), skipped'
                  % (arm.name, arm.seed, study.planned_images))
            done.append((arm, read_json(arm_record_path(arm)), 'skipped'))
            continue
        print('arm %s (split seed %d): %s' % (arm.name, arm.seed, shell_line(arm.command)))
        sys.stdout.flush()
        done.append((arm, run_arm(arm, study.planned_images), 'ran'))
    return done


# ---------------------------------------------------------------------------------------------
# Reports.

def format_duration(seconds):
    seconds = int(round(seconds))
    return '%d:%02d:%02d' % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def ema_test_accuracy(record):
    return read_json(run_folder.stats_path(record['run_dir']))['table']['ema']['test']


def result_row(study, name, records):
    """One arm's row: its accuracy (one split), or the median and range over its splits."""
    accuracies = [ema_test_accuracy(record) for record in records]
    wall = sum(record['wall_s'] for record in records)
    images = sum(record['images_trained'] for record in records)
    speed = '%.1f' % (images / wall) if images and wall else '-'
    if len(study.seeds) == 1:
        accuracy = '%.2f' % accuracies[0]
    else:
        accuracy = '%.2f | %.2f–%.2f | %s' % (np.median(accuracies), min(accuracies),
                                              max(accuracies),
                                              ', '.join('%.2f' % a for a in accuracies))
    return '| %s | %d | %d | %s | %s | %s |' % (name, study.labels, study.train_kimg, accuracy,
                                               format_duration(wall), speed)


def results_markdown(study, done):
    """results.md: what was run, then one table row per arm (over its splits)."""
    several = len(study.seeds) > 1
    splits = ' on the splits of seeds %s' % ', '.join(map(str, study.seeds)) if several else ''
    lines = ['# Study %s' % study.name, '',
             'Dataset `%s`%s, budget %d kimg (%d labeled images) per arm, evaluated every %d kimg, '
             'w_match warm-up %g kimg.' % (study.dataset, splits, study.train_kimg,
                                           study.planned_images, study.report_kimg,
                                           study.warmup_kimg)]
    if study.flags:
        lines.append('Common flags: `%s`.' % ' '.join(study.flags))
    accuracy = ('EMA test accuracy (%), median | range | seeds ' + ', '.join(map(str, study.seeds))
                if several else 'EMA test accuracy (%)')
    lines += ['', '| arm | labels | budget kimg | %s | wall time | img/s |' % accuracy,
              '|---|---:|---:|---:|%s---:|---:|' % ('---:|---:|' if several else '')]
    by_arm = collections.OrderedDict()
    for arm, record, _ in done:
        by_arm.setdefault(arm.name, []).append(record)
    lines += [result_row(study, name, records) for name, records in by_arm.items()]
    lines += ['', 'Arms:']
    lines += ['- %s: `%s`' % (name, ' '.join(study.arm_flags[name])) for name in by_arm]
    lines += ['', 'Wall time is the whole realmix.py process (start-up, training and the '
              'evaluation every %d kimg)%s; img/s = labeled images trained / wall time. '
              'Curves: curves.png; exact commands: commands.txt.'
              % (study.report_kimg, ', summed over the splits' if several else ''), '']
    return '\n'.join(lines)


def prepare_log_path(study):
    """STUDY_DIR/prepare.txt: what --prepare built, kept for the study's commands.txt."""
    return os.path.join(study.folder, 'prepare.txt')


def commands_text(study, done):
    lines = ['# Study %s (scripts/experiment.py); run from %s' % (study.name, os.getcwd()),
             'export ML_DATA=%s' % shlex.quote(os.path.abspath(ml_data_dir()))]
    if os.path.isfile(prepare_log_path(study)):
        with open(prepare_log_path(study)) as f:
            lines += ['', '# --prepare ran these steps in-process; the equivalent commands:']
            lines += f.read().splitlines()
    for arm, _, how in done:
        lines += ['', '# arm %s (%s)' % (arm.name, 'ran now' if how == 'ran' else
                                         'finished earlier, skipped this time'),
                  shell_line(arm.command)]
    return '\n'.join(lines) + '\n'


def write_reports(study, done):
    write_text_atomic(os.path.join(study.folder, 'commands.txt'), commands_text(study, done))
    title = '%s: %s, %d kimg' % (study.name, study.dataset, study.train_kimg)
    if len(study.seeds) > 1:  # one line per arm: its median over the splits, and their range
        groups = collections.OrderedDict()
        for arm, record, _ in done:
            groups.setdefault(arm.name, []).append(record['run_dir'])
        plot_curves.plot_split_medians(groups, os.path.join(study.folder, 'curves.png'),
                                       title + ', splits %s' % ', '.join(map(str, study.seeds)))
    else:
        plot_curves.plot_runs([record['run_dir'] for _, record, _ in done],
                              os.path.join(study.folder, 'curves.png'),
                              labels=[arm.name for arm, _, _ in done], title=title)
    write_text_atomic(os.path.join(study.folder, 'results.md'), results_markdown(study, done))


def prepare_only(study):
    """Build what is missing of the study's data, keep the steps for commands.txt, say how to
    run the study."""
    if not study.prepare:
        raise UserError('study %s has no data recipe for --prepare; create its dataset with '
                        'scripts/create_datasets.py and create_split.py' % study.name)
    log = []
    for seed in study.seeds:
        prepare_data(study.dataset_of(seed), study.prepare, FLAGS.images, log)
    if log:
        write_text_atomic(prepare_log_path(study), '\n'.join(log) + '\n')
    print('dataset %s is ready%s; run the study with:\n%s' % (
        ', '.join(map(study.dataset_of, study.seeds)), '' if log else ' (it was already there)',
        shell_line(['python', 'scripts/experiment.py'] + study_arguments(sys.argv[1:]))))


def study_arguments(argv):
    """The command line without what only --prepare reads (--prepare, --images and its value)."""
    split = argv.index('--') if '--' in argv else len(argv)
    kept, value_of_images = [], False
    for arg in argv[:split]:
        if value_of_images:
            value_of_images = False
        elif arg == '--images':
            value_of_images = True
        elif not re.match(r'--(no)?prepare(=|$)|--images=', arg):
            kept.append(arg)
    return kept + argv[split:]


def main(argv):
    passthrough = argv[1:]  # the flags after `--`
    check_flag_list(passthrough, 'flags after --', BUDGET_FLAGS + ('method',))
    study = resolve_study(FLAGS.study, load_studies(FLAGS.studies_file), FLAGS.study_dir,
                          FLAGS.dataset, FLAGS.arms, parse_arm_flags(FLAGS.arm_flags),
                          FLAGS.train_kimg, FLAGS.report_kimg, FLAGS.warmup_kimg, FLAGS.seeds)
    plans = study.arm_plans(passthrough)
    if FLAGS.prepare:
        prepare_only(study)
    if FLAGS.dry_run:
        print('\n'.join(shell_line(arm.command) for arm in plans))
    if FLAGS.prepare or FLAGS.dry_run:
        return
    check_dataset(study)
    done = run_arms(study, plans)
    write_reports(study, done)
    print('wrote %s' % ', '.join(os.path.join(study.folder, f)
                                 for f in ('results.md', 'curves.png', 'commands.txt')))


if __name__ == '__main__':
    define_flags()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
