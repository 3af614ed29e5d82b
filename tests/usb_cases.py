"""Hand-worked FlexMatch and FreeMatch steps (3 classes, 4 unlabeled images) with the values USB's
code gives: tests/test_flexmatch_freematch.py checks ours against them, tests/usb_agreement.py
USB's own functions (PyTorch). Probabilities are the softmax of their logs, fed as logits."""

import math

NCLASS = 3
LABELED = dict(probs=[[0.5, 0.25, 0.25]], label=[0])  # L_x = ln 2
TAU = 0.95  # FlexMatch's --confidence (USB p_cutoff)

# USB flexmatch/utils.py FlexMatchThresholdingHook.masking, then .update (and flexmatch.py
# train_step's masked CE). Thresholds tau * M(beta), M(x) = x / (2 - x): 0.95 * 2/3 = 0.6333,
# 0.95 / 7 = 0.1357, 0 for classes 0, 1, 2.
FLEX = dict(
    status=[-1, 0, 0, 1, -1, 2, 0, -1, -1, 1, -1, -1],  # N = 12 images
    beta=[0.8, 0.25, 0.],  # the previous step's learning effects
    index=[1, 4, 7, 3],
    weak=[[0.30, 0.45, 0.25],   # class 1, 0.45 >= 0.1357: kept; below tau: status stays 0
          [0.60, 0.30, 0.10],   # class 0, 0.60 < 0.6333: masked out
          [0.97, 0.02, 0.01],   # class 0: kept; >= tau: status -1 -> 0
          [0.01, 0.02, 0.97]],  # class 2: kept; >= tau: status 1 -> 2
    strong=[[0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]],
    mask=[1., 0., 1., 1.],
    new_status=[-1, 0, 0, 2, -1, 2, 0, 0, -1, 1, -1, -1],  # sigma = 4, 1, 2; 5 unused
    new_beta={True: [4 / 5., 1 / 5., 2 / 5.],  # warm-up: / max(4, 5)
              False: [1., 1 / 4., 2 / 4.]},  # no warm-up: / 4
    xeu=(-math.log(0.5) - math.log(0.6) - math.log(0.5)) / 4)

# USB freematch/utils.py FreeMatchThresholingHook.update then .masking, freematch.py
# entropy_loss, with momentum 0.5 so that one step moves the state (1/3 each before):
#   tau = 1/6 + 0.5 * mean(0.7, 0.8, 0.45, 0.6);  p = 1/6 + 0.5 * mean of the rows;
#   h = 1/6 + 0.5 * (2, 1, 1) / 4;  thresholds tau * p / max p = 0.4686, 0.4854, 0.3928.
FREE = dict(
    momentum=0.5,
    weak=[[0.70, 0.20, 0.10], [0.10, 0.80, 0.10], [0.45, 0.35, 0.20], [0.20, 0.20, 0.60]],
    strong=[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.05, 0.05, 0.9], [0.5, 0.1, 0.4]],
    tau=0.4854166667,
    p_model=[0.3479166667, 0.3604166667, 0.2916666667],
    label_hist=[0.4166666667, 0.2916666667, 0.2916666667],
    mask=[1., 1., 0., 1.],  # image 2: 0.45 < 0.4686
    # Masked strong views: arg-max histogram (2/3, 1/3, 0), so class 2's 1/0 reads as 0.
    fairness=-9.4533123,
    xeu=(-math.log(0.6) - math.log(0.5) - math.log(0.4)) / 4)
