"""RealMix library: data, augmentation, layers, models, training, evaluation, device shim."""
