"""Tiny learnable datasets in the real $ML_DATA layout, made by the tests themselves."""

import json
import os

import numpy as np

from libml import records


def class_images(count, size=8, colors=1, nclass=3, seed=0):
    """Noisy stripes whose direction tells the class (horizontal, vertical, none): a pattern a
    small conv net with global pooling learns in a few hundred steps."""
    rng = np.random.RandomState(seed)
    labels = np.arange(count) % nclass
    images = rng.randint(0, 80, [count, size, size, colors])
    stripes = (np.arange(size) % 2 == 0)
    for image, label in zip(images, labels):
        if label % 3 == 0:
            image[stripes] += 170
        elif label % 3 == 1:
            image[:, stripes] += 170
        else:
            image += 85
    return images.astype(np.uint8), labels.astype(np.int64)


def write(path, images, labels):
    records.write_records(path, (records.make_example(records.encode_png(i), int(l))
                                 for i, l in zip(images, labels)))


def make_ssl_dataset(root, name='tiny', nclass=3, labeled=12, unlabeled=120, test=30, size=8,
                     colors=1, seed=1):
    """Write NAME-train/test, the split NAME.SEED@LABELED and class mappings; return the id stem."""
    os.makedirs(os.path.join(root, 'SSL'), exist_ok=True)
    images, labels = class_images(labeled + unlabeled, size, colors, nclass, seed=0)
    test_images, test_labels = class_images(test, size, colors, nclass, seed=1)
    write(os.path.join(root, '%s-train.tfrecord' % name), images, labels)
    write(os.path.join(root, '%s-test.tfrecord' % name), test_images, test_labels)
    prefix = os.path.join(root, 'SSL', '%s.%d@%d' % (name, seed, labeled))
    write(prefix + '-label.tfrecord', images[:labeled], labels[:labeled])
    write(prefix + '-unlabel.tfrecord', images[labeled:], labels[labeled:])
    with open(os.path.join(root, '%s_class_mappings.json' % name), 'w') as f:
        json.dump({str(i): 'class%d' % i for i in range(nclass)}, f)
    return '%s.%d@%d' % (name, seed, labeled)
