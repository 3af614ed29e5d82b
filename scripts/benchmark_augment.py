#!/usr/bin/env python
"""Strong views per second on ONE pinned core: ours (libml/randaugment.py in tf.data) against the
reference's own Pillow functions and, when installed, MindSpore's C++ pipeline.

    python scripts/benchmark_augment.py                    # 2,048 CIFAR-10 images, 5 repeats
    python scripts/benchmark_augment.py --core=1 --per_image

Every pipeline gets the same images (CIFAR-10 JPEGs from ../shared/data, or random ones with a
note) and runs in this one process, pinned to one core, with TensorFlow's and tf.data's thread pools
at one thread. The settings run round-robin --repeats times; the medians are printed.
  - ours: weak view (flip, reflect-pad 4 + crop) and strong view on uint8: both batched after
    .batch() (weak_views, strong_views); the weak view per image (libml.augment) and strong_views
    after .batch(); with --per_image also both per image (strong_view in the per-image map)
  - reference: its rac policy drawn and applied as AugmentPoolRAMC does (np.random policy,
    augmentations.apply_policy, cutout_numpy, astype('f')) on the weak views in [-1, 1]; the weak
    view itself is TF in its pipeline and is not timed here
  - mindspore: RandomHorizontalFlip, RandomCrop(32, 4, REFLECT), RandAugment(2, 9), CutOut(16)
"""

import ast
import contextlib
import glob
import io
import os
import platform
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

from absl import app, flags  # noqa: E402

from libml.utils import UserError, cli_main, quiet_native_logs  # noqa: E402 (no TensorFlow)

SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
flags.DEFINE_integer('images', 2048, 'Distinct images (cycled through).')
flags.DEFINE_integer('views', 4096, 'Strong views per timed run.')
flags.DEFINE_integer('batch', 256, 'Batch of strong_views (ours).')
flags.DEFINE_integer('repeats', 5, 'Timed runs of each pipeline; the median is reported.')
flags.DEFINE_integer('core', -1, 'CPU core to pin to (-1: the last one this process may use).')
flags.DEFINE_bool('per_image', False, 'Also time weak + strong_view inside the per-image map.')
flags.DEFINE_string('data', os.path.join(SHARED, 'data', 'cifar10-jpeg.tar.gz'),
                    'CIFAR-10 JPEG archive; random images when it is absent.')
flags.DEFINE_string('reference', os.path.join(
    SHARED, 'reference', 'google-research-fixmatch-d4985a1.tar.gz'),
    'google-research/fixmatch tarball; its Pillow pipeline is skipped when absent.')
FLAGS = flags.FLAGS

ASCEND_LABELED_PER_S = 1487  # one Ascend 910 card, the seed's training speed (labeled img/s)
URATIO = 7  # FixMatch's unlabeled ratio: strong views per labeled image


def pin(core):
    """Pin this process (and the threads it will start) to one core; return the core."""
    allowed = sorted(os.sched_getaffinity(0))
    core = allowed[-1] if core < 0 else core
    if core not in allowed:
        raise UserError('--core=%d: this process may use cores %s' % (core, allowed))
    os.sched_setaffinity(0, {core})
    return core


def load_images(path, count):
    """[count, 32, 32, 3] uint8 CIFAR-10 test images from the JPEG archive, or random ones."""
    import numpy as np
    from PIL import Image
    if not os.path.exists(path):
        print('note: %s absent; random 32x32 images instead' % path)
        images = np.random.RandomState(0).randint(0, 256, (count, 32, 32, 3))
        return images.astype(np.uint8), 'random'
    images = []
    with tarfile.open(path) as archive:
        for member in archive:
            if member.isfile() and member.name.startswith('test/') and member.name.endswith('.jpg'):
                data = archive.extractfile(member).read()
                images.append(np.array(Image.open(io.BytesIO(data)).convert('RGB')))
                if len(images) == count:
                    break
    return np.stack(images), 'CIFAR-10 test JPEGs'


def weak_numpy(images, seed=0):
    """Flip + reflect-pad 4 + crop in numpy: the reference pool's input (float [-1, 1])."""
    import numpy as np
    rng = np.random.RandomState(seed)
    out = []
    for image in images:
        if rng.rand() < 0.5:
            image = image[:, ::-1]
        padded = np.pad(image, [(4, 4), (4, 4), (0, 0)], mode='reflect')
        top, left = rng.randint(0, 9, 2)
        out.append(padded[top:top + 32, left:left + 32])
    return np.stack(out).astype(np.float32) * (2.0 / 255) - 1


@contextlib.contextmanager
def timed(setting, views):
    """Append the views per wall-clock second and per CPU second (all of this process's threads:
    with other work on the core, the wall clock also counts waiting) to setting.rates/.cpu_rates."""
    wall, cpu = time.time(), time.process_time()
    yield
    setting.rates.append(views / (time.time() - wall))
    setting.cpu_rates.append(views / max(time.process_time() - cpu, 1e-9))


class Ours(object):
    """Our tf.data pipeline on uint8 images: weak view, then strong view, in one of three forms."""

    FORMS = {'batched': 'ours, weak_views + strong_views, batch %d',
             'weak per image': 'ours, weak per image + strong_views, batch %d',
             'per image': 'ours, weak + strong_view per image, batch %d'}

    def __init__(self, images, batch, form):
        import tensorflow.compat.v1 as tf
        from libml import randaugment
        self.name = self.FORMS[form] % batch
        self.batch = batch
        self.rates, self.cpu_rates = [], []
        graph = tf.Graph()
        with graph.as_default():
            tf.set_random_seed(1)
            dataset = tf.data.Dataset.from_tensor_slices(images).repeat()
            if form == 'batched':
                dataset = dataset.batch(batch, drop_remainder=True).map(
                    lambda x: randaugment.strong_views(randaugment.weak_views(x)))
            elif form == 'weak per image':
                dataset = dataset.map(self.weak).batch(batch, drop_remainder=True).map(
                    randaugment.strong_views)
            else:
                dataset = dataset.map(lambda x: randaugment.strong_view(self.weak(x))).batch(
                    batch, drop_remainder=True)
            self.next = tf.data.make_one_shot_iterator(
                dataset.with_options(one_thread_options())).get_next()
            config = tf.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
            self.session = tf.Session(config=config)
        self.session.run(self.next)

    @staticmethod
    def weak(image):
        """libml.augment's `cifar10` flip + crop, per image (on uint8)."""
        from libml import augment
        return augment.shift(augment.flip(image))

    def run(self, views):
        steps = max(1, views // self.batch)
        with timed(self, steps * self.batch):
            for _ in range(steps):
                self.session.run(self.next)


def one_thread_options():
    """tf.data options: one private thread, no autotuning and no injected prefetch (which would
    keep producing in the background while another pipeline is timed)."""
    import tensorflow.compat.v1 as tf
    options = tf.data.Options()
    threading = getattr(options, 'threading', None) or options.experimental_threading
    threading.private_threadpool_size = 1
    if hasattr(options, 'autotune'):  # TF 2.x
        options.autotune.enabled = False
        options.experimental_optimization.inject_prefetch = False
    else:  # TF 1.15
        options.experimental_optimization.autotune = False
    return options


def load_reference(tarball):
    """The reference's augmentations module and its RANDOM_POLICY_OPS, or (None, None)."""
    import importlib.util
    if not os.path.exists(tarball):
        print('note: %s absent; the reference pipeline is skipped' % tarball)
        return None, None
    folder = tempfile.mkdtemp(prefix='fixmatch-ref-')
    with tarfile.open(tarball) as archive:
        wanted = [m for m in archive.getmembers() if m.name.endswith(
            ('third_party/auto_augment/augmentations.py', 'libml/augment.py'))]
        archive.extractall(folder, members=wanted)
    path = glob.glob(os.path.join(folder, '*', 'third_party', 'auto_augment',
                                  'augmentations.py'))[0]
    spec = importlib.util.spec_from_file_location('fixmatch_augmentations', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # its libml/augment.py imports TensorFlow and builds a 16.8-million-entry flag: read, not import
    with open(glob.glob(os.path.join(folder, '*', 'libml', 'augment.py'))[0]) as f:
        tree = ast.parse(f.read())
    ops = [ast.literal_eval(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
           and getattr(node.targets[0], 'id', '') == 'RANDOM_POLICY_OPS'][0]
    return module, ops


class Reference(object):
    """The reference's pool work per image (AugmentPoolRAMC.numpy_apply_policies on one image)."""

    def __init__(self, weak_views, augmentations, ops):
        self.name = 'reference Pillow (rac + cutout)'
        self.views, self.augmentations, self.ops = weak_views, augmentations, ops
        self.rates, self.cpu_rates = [], []
        self.position = 0

    def run(self, views):
        import numpy as np
        a = self.augmentations
        with timed(self, views):
            for _ in range(views):
                x = self.views[self.position % len(self.views)][None]
                self.position += 1
                policies = [[(op, 0.5, np.random.randint(1, 10))
                             for op in np.random.choice(self.ops, 2)]]
                np.stack([a.cutout_numpy(a.apply_policy(policy, y))
                          for y, policy in zip(x, policies)]).astype('f')


class MindSpore(object):
    """MindSpore's C++ pipeline: flip, crop, RandAugment(2, 9), CutOut(16), one worker."""

    def __init__(self, images, batch):
        import mindspore.dataset as ds
        import mindspore.dataset.vision as vision
        self.name = 'MindSpore (RandAugment(2, 9) + CutOut(16))'
        self.rates, self.cpu_rates = [], []
        self.batch = batch
        ds.config.set_num_parallel_workers(1)
        source = ds.NumpySlicesDataset({'image': images}, shuffle=False, num_parallel_workers=1)
        transforms = [vision.RandomHorizontalFlip(),
                      vision.RandomCrop(32, padding=4, padding_mode=vision.Border.REFLECT),
                      vision.RandAugment(num_ops=2, magnitude=9), vision.CutOut(16)]
        pipeline = source.map(transforms, input_columns='image', num_parallel_workers=1)
        self.iterator = pipeline.repeat().batch(batch).create_tuple_iterator(output_numpy=True)

    def run(self, views):
        steps = max(1, views // self.batch)
        with timed(self, steps * self.batch):
            for _ in range(steps):
                next(self.iterator)


def mindspore_or_none(images, batch):
    """The MindSpore setting when `mindspore` imports, else None (it is optional)."""
    try:
        import mindspore  # noqa: F401
    except ImportError:
        print('note: mindspore is not installed; its pipeline is skipped')
        return None
    return MindSpore(images, batch)


def cpu_name():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def main(argv):
    del argv
    core = pin(FLAGS.core)
    import numpy as np
    import PIL
    import tensorflow.compat.v1 as tf
    if FLAGS.images < 1 or FLAGS.views < 1 or FLAGS.batch < 1 or FLAGS.repeats < 1:
        raise UserError('--images, --views, --batch and --repeats must be at least 1')
    images, source = load_images(FLAGS.data, FLAGS.images)
    print('%d %s, 32x32x3; core %d of %d (%s); TensorFlow %s, Pillow %s, Python %s'
          % (len(images), source, core, os.cpu_count(), cpu_name(), tf.VERSION,
             PIL.__version__, platform.python_version()))
    forms = ['batched', 'weak per image'] + (['per image'] if FLAGS.per_image else [])
    settings = [Ours(images, FLAGS.batch, form) for form in forms]
    augmentations, ops = load_reference(FLAGS.reference)
    if augmentations is not None:
        settings.append(Reference(weak_numpy(images), augmentations, ops))
    mindspore = mindspore_or_none(images, FLAGS.batch)
    if mindspore is not None:
        settings.append(mindspore)
    for _ in range(FLAGS.repeats):  # round-robin, so a change in machine load hits every setting
        for setting in settings:
            setting.run(FLAGS.views)
    medians, cpu = {}, {}
    for setting in settings:
        medians[setting.name] = float(np.median(setting.rates))
        cpu[setting.name] = float(np.median(setting.cpu_rates))
        print('%-44s %9.0f views/s   (median of %d; runs: %s)' % (
            setting.name, medians[setting.name], FLAGS.repeats,
            ' '.join('%.0f' % rate for rate in setting.rates)))
    for setting in settings:
        print('%-44s %9.0f views per CPU second' % (setting.name, cpu[setting.name]))
    ours = settings[0].name
    for other in settings[1:]:
        print('ratio %s / %s = %.2fx (wall clock), %.2fx (CPU time)' % (
            ours, other.name, medians[ours] / medians[other.name], cpu[ours] / cpu[other.name]))
    needed = ASCEND_LABELED_PER_S * URATIO
    print('one Ascend card at %d labeled img/s with --uratio=%d needs %d strong views/s: '
          '%.1f host cores of ours at %.0f views/s per core'
          % (ASCEND_LABELED_PER_S, URATIO, needed, needed / medians[ours], medians[ours]))


if __name__ == '__main__':
    quiet_native_logs()
    app.run(cli_main(main))
