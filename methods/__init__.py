"""The training methods, one module each, all of one shape:

    NAME             the --method value
    NEEDS_UNLABELED  whether the trainer builds the unlabeled pipeline
    FLAGS            the method's own flags (libml.hparams.Flag); they name its runs
    losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass)
                     -> dict(loss=..., xe=..., other scalars to log); unlabeled_batch is None
                        when NEEDS_UNLABELED is False; classify(x, training, update_stats=True,
                        teacher=False) gives logits, with the EMA weights when teacher=True

Optional, for methods that train otherwise than the reference's MixMatch family (Adam, decoupled
weight decay, two weak views of B unlabeled images):
    DEFAULTS         {common flag: this method's default}, e.g. FixMatch's lr and wd
    optimizer(hp, images_seen)
                     -> the tf.train optimizer of a step (default Adam(--lr)); its learning-rate
                        schedule is the method's
    WEIGHT_DECAY     'decoupled' (default: kernels *= 1 - wd * lr after each step) or 'loss' (the
                        method adds wd * its own L2 term to its loss; no decay after the step)
    UNLABELED_VIEWS  the views of each unlabeled image: ('weak', 'weak') by default, ('weak',
                        'strong') for RandAugment + Cutout on the second (libml/randaugment.py)
    unlabeled_batch(hp)
                     -> unlabeled images per step and replica (default --batch)
    SHARES_STATE     True: losses() also gets `sum_over_replicas(tensors)` (the tensors summed
                        over every replica of every process, one collective) to build the same
                        state on every replica (FlexMatch, FreeMatch)
State across steps: a method may keep non-trainable variables of its own (`state_variable`); they
are saved in and restored from checkpoints with the rest. losses() may return `state_update`, an op
the step runs (the method orders it against the reads of its own losses). The unlabeled batch
also holds `index`, each image's position in the unlabeled set.

A new method is one new module here: it is found by its file and selected with --method=NAME.
"""

import importlib
import pkgutil

import tensorflow.compat.v1 as tf

from libml import hparams
from libml.utils import UserError


def _load():
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module('%s.%s' % (__name__, info.name))
        found[module.NAME] = module
    return found


METHODS = _load()


def names():
    """The --method choices, RealMix first."""
    return sorted(METHODS, key=lambda name: (name != 'realmix', name))


def get(name):
    """The module of method `name`; UserError for an unknown one."""
    if name not in METHODS:
        raise UserError('unknown --method=%s; choose one of: %s' % (name, ', '.join(names())))
    return METHODS[name]


def all_flags():
    """Every method's own flags, each name once (methods may share one, e.g. MixUp's beta)."""
    return hparams.merge(spec for name in names() for spec in METHODS[name].FLAGS)


def flag_specs(name):
    """The flags a run of method `name` reads: the common ones (with its DEFAULTS), then its own."""
    defaults = getattr(get(name), 'DEFAULTS', {})
    common = [spec._replace(default=defaults.get(spec.name, spec.default))
              for spec in hparams.COMMON_FLAGS]
    return common + list(get(name).FLAGS)


def optimizer(method, hp, images_seen):
    """The optimizer of a step of `method`: its own, else Adam at --lr (the reference's)."""
    if hasattr(method, 'optimizer'):
        return method.optimizer(hp, images_seen)
    return tf.train.AdamOptimizer(hp['lr'])


def decoupled_weight_decay(method):
    """True when the step decays kernels after the update; False when the method's loss has its
    own L2 term."""
    return getattr(method, 'WEIGHT_DECAY', 'decoupled') == 'decoupled'


def unlabeled_views(method):
    """The views each unlabeled image comes in ('weak' or 'strong' each)."""
    return tuple(getattr(method, 'UNLABELED_VIEWS', ('weak', 'weak')))


def unlabeled_batch(method, hp):
    """Unlabeled images per step and replica."""
    if hasattr(method, 'unlabeled_batch'):
        return method.unlabeled_batch(hp)
    return hp['batch']


def losses(method, labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass,
           sum_over_replicas):
    """method.losses(...), with `sum_over_replicas` for a method that SHARES_STATE."""
    shared = {}
    if getattr(method, 'SHARES_STATE', False):
        shared['sum_over_replicas'] = sum_over_replicas
    return method.losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass,
                         **shared)


def state_variable(name, shape, dtype, initializer):
    """A non-trainable variable a method keeps across steps (scope `method_state/`): saved in
    checkpoints, restored on resume, not part of the model (evaluation and export skip it).
    Replicas assign it the same value (built from `sum_over_replicas`): the first one's is kept."""
    with tf.variable_scope('method_state', reuse=tf.AUTO_REUSE):
        return tf.get_variable(name, shape, dtype, initializer=initializer, trainable=False,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
