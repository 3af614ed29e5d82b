"""RealMix library: data, augmentation, layers, models, training, evaluation, device shim.

Importing it sets TensorFlow's process environment, so entry points import it before TensorFlow.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ logs quiet
# TF 2.x turns its oneDNN CPU kernels on by default only where the CPU has AVX512-VNNI, AVX512-BF16
# or AMX; on AVX2 CPUs (AMD EPYC, older Intel) its Eigen kernels train WRN-28-2 1.46x slower
# (docs/speed.md). TensorFlow reads this once, when it loads; TF 1.15's stock wheels ignore it.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
# TF 2.x's import loads Keras 3 eagerly (and scikit-learn, through Keras's wrappers) unless told
# that tf.keras is the legacy tf_keras, which it then loads only if installed: about 1-2 s of every
# start on a 2-core machine. This project uses no Keras; a process that wants Keras 3 as tf.keras
# sets TF_USE_LEGACY_KERAS=0. TF 1.15 ignores it.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')
