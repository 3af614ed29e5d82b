"""The training methods, one module each, all of one shape:

    NAME             the --method value
    NEEDS_UNLABELED  whether the trainer builds the unlabeled pipeline
    FLAGS            the method's own flags (libml.hparams.Flag); they name its runs
    losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass)
                     -> dict(loss=..., xe=..., other scalars to log); unlabeled_batch is None
                        when NEEDS_UNLABELED is False; classify(x, training, update_stats=True,
                        teacher=False) gives logits, with the EMA weights when teacher=True

A new method is one new module here: it is found by its file and selected with --method=NAME.
"""

import importlib
import pkgutil

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
    """The flags a run of method `name` reads: the common ones, then the method's own."""
    return hparams.COMMON_FLAGS + list(get(name).FLAGS)
