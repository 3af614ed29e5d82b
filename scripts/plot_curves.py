#!/usr/bin/env python
"""Plot EMA test/valid accuracy and the losses of several runs against kimg, on one PNG.

    python scripts/plot_curves.py RUN_DIR... --out curves.png [--labels=supervised,realmix]

RUN_DIR is a run folder (TRAIN_DIR/DATASET/EXPERIMENT) whose tf/ holds the TensorBoard events.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import libml  # noqa: E402,F401  (first: it sets TensorFlow's environment before TF loads)

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
matplotlib.use('Agg')  # No display: render to files only.
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from libml import events  # noqa: E402
from libml.utils import UserError, atomic_output, cli_main  # noqa: E402

FLAGS = flags.FLAGS
# (tag written by the trainer, panel title, log scale when wide): accuracy/* are the EMA rows.
PANELS = (('accuracy/test', 'test accuracy, EMA (%)', False),
          ('accuracy/valid', 'valid accuracy, EMA (%)', False),
          ('losses/xe', 'labeled loss xe', True),
          ('losses/l2u', 'unlabeled loss l2u', True))


def define_flags():
    flags.DEFINE_string('out', None, 'PNG file to write.')
    flags.DEFINE_list('labels', None, 'Legend names, one per run (default: run folder names).')


def run_label(run_dir):
    """The run folder's own name (its experiment name)."""
    return os.path.basename(os.path.normpath(run_dir))


def load_curves(run_dir):
    """{tag: ([kimg...], [value...])} of the plotted tags a run has; UserError without events."""
    scalars = events.read_scalars(run_dir)
    return {tag: ([step / 1024. for step, _ in scalars[tag]], [value for _, value in scalars[tag]])
            for tag, _, _ in PANELS if scalars.get(tag)}


def wide_positive_range(values):
    """Losses spanning more than a factor of 20 read better on a log scale."""
    return min(values) > 0 and max(values) > 20 * min(values)


def draw(curves, labels, title=None):
    """A 2x2 figure, one line per run (same colour in every panel), one legend below."""
    figure, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    colors = ['C%d' % (i % 10) for i in range(len(labels))]
    for axis, (tag, panel_title, log_scale) in zip(axes.flat, PANELS):
        drawn = [(color, run[tag]) for color, run in zip(colors, curves) if tag in run]
        for color, (kimg, values) in drawn:
            axis.plot(kimg, values, color=color, marker='.' if len(kimg) < 30 else None)
        if not drawn:
            axis.text(0.5, 0.5, 'no data', ha='center', va='center', transform=axis.transAxes)
        elif log_scale and wide_positive_range([v for _, (_, values) in drawn for v in values]):
            axis.set_yscale('log')
        axis.set_title(panel_title)
        axis.set_xlabel('kimg (1024 labeled images seen)')
        axis.grid(True, alpha=0.3)
    # Run names can be long experiment names: one shared legend under the panels, one name a
    # row unless all of them fit on one line.
    columns = len(labels) if sum(len(label) for label in labels) < 100 else 1
    rows = -(-len(labels) // columns)
    handles = [Line2D([], [], color=color) for color in colors]
    figure.legend(handles, labels, loc='lower center', ncol=columns, fontsize='small',
                  frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.02 + 0.025 * rows, 1, 1))
    return figure


def plot_runs(run_dirs, out, labels=None, title=None):
    """Read every run's events and write the figure to `out` (PNG, atomically)."""
    if not run_dirs:
        raise UserError('give at least one run folder to plot')
    if not out or not out.lower().endswith('.png'):
        raise UserError('--out=%s: give a .png file to write' % out)
    labels = list(labels) if labels else [run_label(d) for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise UserError('--labels has %d names for %d run folders; give one per run'
                        % (len(labels), len(run_dirs)))
    curves = [load_curves(d) for d in run_dirs]
    return save(draw(curves, labels, title), out)


def split_band(run_dirs, tag='accuracy/test'):
    """(kimg, median, low, high) of `tag` over runs of one arm on several splits, at the steps
    every run has."""
    series = [dict(events.read_scalars(d).get(tag, [])) for d in run_dirs]
    steps = sorted(set.intersection(*[set(s) for s in series]))
    values = np.array([[s[step] for step in steps] for s in series])
    kimg = [step / 1024. for step in steps]
    return kimg, np.median(values, 0), values.min(0), values.max(0)


def plot_split_medians(groups, out, title=None):
    """EMA test accuracy of each arm over its splits: the median line and the min-max band
    (`groups`: {arm: [run folders, one per split]}); written to `out` atomically."""
    figure, axis = plt.subplots(figsize=(11, 6))
    for i, (arm, run_dirs) in enumerate(groups.items()):
        kimg, median, low, high = split_band(run_dirs)
        color = 'C%d' % (i % 10)
        axis.plot(kimg, median, color=color, marker='.', label=arm,
                  linestyle='-' if i < 10 else '--')
        axis.fill_between(kimg, low, high, color=color, alpha=0.12)
    axis.set_xlabel('kimg (1024 labeled images seen)')
    axis.set_ylabel('test accuracy, EMA (%): median over splits, band min-max')
    axis.grid(True, alpha=0.3)
    axis.legend(loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize='small', frameon=False)
    if title:
        axis.set_title(title)
    figure.tight_layout()
    return save(figure, out)


def save(figure, out):
    """Write `figure` to `out` (PNG) atomically and close it; returns `out`."""
    try:
        with atomic_output(out) as tmp:
            figure.savefig(tmp, format='png', dpi=100)
    finally:
        plt.close(figure)
    return out


def main(argv):
    plot_runs(argv[1:], FLAGS.out, FLAGS.labels)
    print('wrote %s' % FLAGS.out)


if __name__ == '__main__':
    define_flags()
    tf.logging.set_verbosity(tf.logging.ERROR)
    tf.disable_v2_behavior()
    app.run(cli_main(main))
