"""The training flags as data, flags -> a run's hyperparameters, run naming, run-folder checks.

No absl here: entry points call `define_flags(absl_flags, specs)` and pass the parsed values back.
Every method shares COMMON_FLAGS; a method module adds its own (see methods/__init__.py).
"""

import collections

from libml import augment, data, models, names, run_folder
from libml.utils import UserError


class Flag(collections.namedtuple('Flag', 'kind name default help check rule enum')):
    """One hyperparameter flag: absl kind, name, default, help; optional range check and choices."""

    def __new__(cls, kind, name, default, help, check=None, rule='', enum=None):  # noqa: A002
        return super(Flag, cls).__new__(cls, kind, name, default, help, check, rule, enum)


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


def _at_least_one(v):
    return v >= 1


def _unit_interval(v):
    return 0 <= v < 1


COMMON_FLAGS = [
    Flag('string', 'dataset', 'cifar10.1@250-500', 'Dataset id NAME.SEED@SIZE-VALID under $ML_DATA.'),
    Flag('enum', 'arch', 'resnet', 'Network.', enum=models.ARCHS),
    Flag('integer', 'filters', 32, 'Filters of the first stage.', _at_least_one, '>= 1'),
    Flag('integer', 'repeat', 4, 'Residual blocks per stage.', _at_least_one, '>= 1'),
    Flag('integer', 'scales', 0, 'Resolution stages; 0 = log2(width) - 2.', _at_least_one,
         '>= 1 (0 picks it from the image size)'),
    Flag('float', 'bn_momentum', 0.999, 'Momentum of the batch-norm moving averages; short runs '
         '(under ~5,000 steps) need less, e.g. 0.99, for the raw and ema rows to settle.',
         _unit_interval, 'in [0, 1)'),
    Flag('bool', 'whiten', False, 'Normalise inputs per channel by the training images\' mean and '
         'standard deviation (the reference\'s --whiten; not applied by its convnet).'),
    Flag('integer', 'batch', 64, 'Labeled (and unlabeled) batch size.', lambda v: v >= 3,
         '>= 3: interleaving needs at least one example from each of the 3 groups per batch'),
    Flag('float', 'lr', 0.002, 'Learning rate: of Adam; fixmatch: of SGD with Nesterov momentum '
         '(default 0.03, cosine decay).', _positive, '> 0'),
    Flag('float', 'wd', 0.02, 'Weight decay: decoupled (kernel *= 1 - wd * lr per step); fixmatch: '
         'wd * the kernels\' L2 loss (default 0.0005).', _non_negative, '>= 0'),
    Flag('float', 'ema', 0.999, 'Decay of the exponential moving average of the weights.',
         _unit_interval, 'in [0, 1)'),
    Flag('enum', 'augment', 'auto', 'Input augmentation (auto: svhn-style for digit sets, else '
         'cifar10).', enum=('auto',) + augment.KINDS),
    Flag('integer', 'train_kimg', 1 << 16, 'Training length in kimg (units of 1024 labeled images).',
         _positive, '> 0'),
    Flag('integer', 'report_kimg', 64, 'Epoch length in kimg: progress bar and evaluation period.',
         _positive, '> 0'),
    Flag('integer', 'save_kimg', 64, 'Checkpoint period in kimg.', _positive, '> 0'),
    Flag('integer', 'keep_ckpt', 50, 'Checkpoints kept.', _at_least_one, '>= 1'),
    Flag('integer', 'epochs', 700, 'Stop after this many epochs of report_kimg.', _positive, '> 0'),
    Flag('integer', 'tune_kimg', 16, 'Training images (kimg) used to re-estimate batch-norm '
         'statistics for the tuned rows; 0 skips the tuned rows.', _non_negative, '>= 0'),
    Flag('integer', 'eval_batch', 256, 'Batch size of evaluation and inference.', _at_least_one,
         '>= 1'),
    Flag('integer', 'nclass', 0, 'Number of classes; 0 = read from the data.'),
    Flag('integer', 'img_size', 0, 'Image size check; 0 = read from the data.'),
    Flag('enum', 'device', 'auto', 'Where to train.', enum=names.DEVICES),
    Flag('enum', 'precision', 'fp32', 'fp32, or mixed (fp16 on NPU/GPU, bfloat16 on CPUs that have '
         'it).', enum=names.PRECISIONS),
    Flag('integer', 'replicas', 1, 'Replicas in this process: MirroredStrategy over this many GPUs '
         '(or logical CPUs). Several processes: scripts/launch.py. --batch is per replica.',
         _at_least_one, '>= 1'),
    Flag('integer', 'iterations_per_loop', 1, 'NPU only: training steps per session.run, looped on '
         'the device (the logged losses are those of each loop\'s last step).', _at_least_one,
         '>= 1'),
    Flag('enum', 'lr_scaling', 'none', 'Learning rate with N replicas: none keeps --lr, linear '
         'multiplies it by N.', enum=('none', 'linear')),
]

# Flags that do not change the trained model: schedule length, evaluation, paths, the device.
# Every other hyperparameter names the run, so two different models never share a folder.
NOT_IN_RUN_NAME = ('dataset', 'train_kimg', 'report_kimg', 'save_kimg', 'keep_ckpt', 'epochs',
                   'tune_kimg', 'eval_batch', 'nclass', 'img_size', 'device', 'total_nimg',
                   'height', 'width', 'colors', 'class_names', 'whiten_stats', 'replicas',
                   'lr_scaling', 'iterations_per_loop', 'names_revision', 'unlabeled_size')

# args.json's `names_revision`: 2 since --method=mixup is the reference's semi-supervised MixUp;
# a run saved before it (none) under a name in RENAMED was trained by the method of the new name.
NAMES_REVISION = 2
RENAMED = {'mixup': 'fs_mixup'}


def merge(specs):
    """Specs in order, each name once; UserError when two methods define one flag differently
    (the default may differ: each method keeps its own, see `from_flags`)."""
    merged = collections.OrderedDict()
    for spec in specs:
        if merged.setdefault(spec.name, spec)._replace(default=None) != spec._replace(default=None):
            raise UserError('flag --%s is defined twice with different settings' % spec.name)
    return list(merged.values())


def flag_value(flag, spec):
    """A parsed flag's value; the method's own default when the command line did not set it."""
    if not getattr(flag, 'present', True) and flag.value == getattr(flag, 'default', flag.value):
        return spec.default
    return flag.value


def define_flags(absl_flags, specs):
    """Register `specs` with absl (entry points only)."""
    for spec in specs:
        kwargs = dict(enum_values=list(spec.enum)) if spec.kind == 'enum' else {}
        getattr(absl_flags, 'DEFINE_' + spec.kind)(spec.name, spec.default, help=spec.help, **kwargs)


def from_flags(flag_values, method, specs, dataset, replicas=1):
    """The checked hyperparameters of a run of `method` from parsed absl flags (`specs` names),
    trained by `replicas` replicas in all."""
    values = dict((spec.name, flag_value(flag_values[spec.name], spec)) for spec in specs)
    hp = hyper_parameters(dict(values, method=method, replicas=replicas), dataset)
    check_flags(hp, specs)
    return hp


def hyper_parameters(values, dataset):
    """Every parameter of a run, as saved in args/args.json, from the method's flag values."""
    hp = dict(values)
    if hp.get('lr_scaling') == 'linear':  # the run's name and args.json hold the lr it trains with
        hp['lr'] *= hp['replicas']
    hp['scales'] = hp['scales'] or models.auto_scales(dataset.width)
    hp['augment'] = auto_augment(hp['augment'], dataset.name)
    report_nimg = hp['report_kimg'] << 10
    hp['total_nimg'] = min(hp['train_kimg'] << 10, hp['epochs'] * report_nimg)
    hp['names_revision'] = NAMES_REVISION
    hp.update(dataset=dataset.dataset_id, height=dataset.height, width=dataset.width,
              colors=dataset.colors, nclass=dataset.nclass, class_names=dataset.class_names,
              unlabeled_size=data.unlabeled_size(dataset))  # FlexMatch's per-image state
    if hp.get('whiten'):  # measured once and kept in args.json: evaluation and export reuse them
        hp['whiten_stats'] = data.channel_mean_std(dataset)
    return hp


def auto_augment(kind, name):
    """`auto` picks shift-only augmentation for digit sets (no mirror symmetry), else flip+crop."""
    if kind != 'auto':
        return kind
    return 'svhn' if any(k in name for k in ('svhn', 'digits', 'mnist')) else 'cifar10'


def check_flags(hp, specs):
    """UserError naming the first flag outside its range, or a weight decay that flips signs."""
    for spec in specs:
        if spec.check and spec.name in hp and not spec.check(hp[spec.name]):
            raise UserError('--%s=%s is out of range: it must be %s' % (spec.name, hp[spec.name],
                                                                         spec.rule))
    if hp['wd'] * hp['lr'] >= 1:
        raise UserError('--wd=%g with --lr=%g: weight decay multiplies kernels by 1 - wd * lr = %g '
                        'each step; wd * lr must be below 1' % (hp['wd'], hp['lr'],
                                                                1 - hp['wd'] * hp['lr']))


def run_name_keys(hp):
    """The hyperparameters that name a run, sorted (the method's own flags included)."""
    return sorted(k for k in hp if k not in NOT_IN_RUN_NAME and k != 'method')


def experiment_name(hp):
    """METHOD_key1value1_key2value2..., from every hyperparameter that changes the trained model."""
    def text(value):
        return '%g' % value if isinstance(value, float) else str(value)
    return '_'.join([hp['method']] + ['%s%s' % (k, text(hp[k])) for k in run_name_keys(hp)])


def check_run_folder(run_dir, hp):
    """UserError when RUN/args/args.json holds a model with other hyperparameters than `hp`."""
    saved = run_folder.read_args(run_dir)
    if saved is None:
        return
    check_not_renamed(run_dir, saved)
    differing = ['--%s=%s here, %s in the run' % (k, hp.get(k), saved.get(k))
                 for k in ['method'] + run_name_keys(hp) if saved.get(k) != hp.get(k)]
    if differing:
        raise UserError('%s belongs to another model (%s); use another --train_dir or remove the '
                        'folder' % (run_dir, '; '.join(differing)))


def check_not_renamed(run_dir, saved):
    """UserError, one line, for a run saved under a --method name that now means another method."""
    old = saved.get('method')
    if old in RENAMED and saved.get('names_revision', 1) < NAMES_REVISION:
        raise UserError('%s was trained by the old --method=%s, which is now --method=%s; use that '
                        'name (--method=%s is now another method)' % (run_dir, old, RENAMED[old], old))
