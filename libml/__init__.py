"""RealMix library: data, augmentation, layers, models, training, evaluation, device shim.

Importing it sets TensorFlow's process environment, so entry points import it before TensorFlow.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ logs quiet
# TF 2.x turns its oneDNN CPU kernels on by default only where the CPU has AVX512-VNNI, AVX512-BF16
# or AMX; on AVX2 CPUs (AMD EPYC, older Intel) its Eigen kernels train WRN-28-2 1.46x slower
# (docs/speed.md). TensorFlow reads this once, when it loads; TF 1.15's stock wheels ignore it.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
