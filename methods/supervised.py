"""The fully supervised baseline without label smoothing: `fs_baseline --smoothing=0`, kept under
its first name so its runs and commands stay valid."""

from methods import fs_baseline

NAME = 'supervised'
NEEDS_UNLABELED = False
FLAGS = []


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """Cross-entropy of the labeled batch; the unlabeled data is not read."""
    del unlabeled_batch, hp, images_seen
    return fs_baseline.supervised_losses(labeled_batch, classify, nclass, 0.)
