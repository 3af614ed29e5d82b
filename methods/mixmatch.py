"""MixMatch (Berthelot et al. 2019), the reference's `mixmatch.py`: RealMix without TSA and OOD
masking, with MixMatch's defaults (beta 0.5, w_match 100)."""

from methods import realmix

NAME = 'mixmatch'
NEEDS_UNLABELED = True
FLAGS = [realmix.BETA._replace(default=0.5), realmix.W_MATCH._replace(default=100.),
         realmix.WARMUP_KIMG, realmix.TEMPERATURE]


def losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass):
    """The loss of one MixMatch step and the scalars to log."""
    hp = dict(hp, tsa='none', percent_mask=-1)
    return realmix.losses(labeled_batch, unlabeled_batch, classify, hp, images_seen, nclass)
