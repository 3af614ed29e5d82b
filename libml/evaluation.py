"""One evaluation routine for every report: accuracy table, tuned batch norm, class metrics, inference."""

import collections
import json

import numpy as np
import tensorflow.compat.v1 as tf

from libml import data, layers, run_folder
from libml.utils import write_text_atomic

SUBSETS = ('labeled', 'valid', 'test')


def ema_getter(ema):
    """Custom getter that swaps each averaged (trainable) variable for its moving average.

    Variables without an average (batch-norm moving statistics) are read as they are, as in the
    reference code.
    """
    def custom_getter(getter, *args, **kwargs):
        variable = getter(*args, **kwargs)
        average = ema.average(variable)
        return variable if average is None else average
    return custom_getter


def evaluation_towers(classify, images, ema):
    """Inference towers (raw and EMA weights) and training-mode towers exposing batch moments.

    `images` are float images in [-1, 1] (a placeholder the Evaluator feeds). `ema` is the run's
    ExponentialMovingAverage: its shadow variables are made here if the training step has not
    made them, with the names a training checkpoint holds.
    """
    ops = dict(eval_images=images, probs_raw=tf.nn.softmax(classify(images, training=False)))
    ema.apply(tf.trainable_variables('classify'))  # the update op is unused: training has its own
    ops['probs_ema'] = tf.nn.softmax(classify(images, training=False, getter=ema_getter(ema)))
    for kind, getter in (('raw', None), ('ema', ema_getter(ema))):
        first = len(tf.get_collection(layers.BN_MOMENTS))
        classify(images, training=True, update_stats=False, getter=getter)
        ops['moments_' + kind] = tf.get_collection(layers.BN_MOMENTS)[first:]
    ops['set_statistics'] = _statistics_setter(ops['moments_raw'])
    return ops


def _statistics_setter(moments):
    """(placeholders, op) that overwrite every batch-norm moving mean and variance, built with the
    graph (a finalized graph, or a distribution strategy's copies, admit no Variable.load)."""
    placeholders, assigns = [], []
    for moving_mean, moving_variance, _, _ in moments:
        for variable in (moving_mean, moving_variance):
            placeholders.append(tf.placeholder(variable.dtype.base_dtype, variable.shape))
            assigns.append(tf.assign(variable, placeholders[-1]))
    return placeholders, tf.group(*assigns)


class Evaluator(object):
    """Evaluates a session's model on fixed in-memory sets; never rebuilds the graph or rereads files."""

    def __init__(self, session, ops, eval_sets, tune_images, class_names):
        self.session = session
        self.ops = ops
        self.eval_sets = collections.OrderedDict(
            (name, (data.to_float(images), labels)) for name, (images, labels) in eval_sets.items())
        self.tune_images = data.to_float(tune_images) if tune_images is not None else None
        self.class_names = class_names
        self.batch = int(ops['eval_images'].shape[0])

    def _batches(self, images):
        """Fixed-size batches (the last one padded), so every device sees one static shape."""
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            yield chunk, self.batch - pad

    def predict(self, images, kind='ema'):
        """Class probabilities for float images with raw or EMA weights."""
        out = [self.session.run(self.ops['probs_' + kind], {self.ops['eval_images']: chunk})[:real]
               for chunk, real in self._batches(images)]
        nclass = int(self.ops['probs_' + kind].shape[1])
        return np.concatenate(out) if out else np.zeros([0, nclass], np.float32)

    def _estimate_moments(self, kind):
        """Average batch means and variances of every BN layer over the tune images."""
        moments = self.ops['moments_' + kind]
        fetch = [(mean, variance) for _, _, mean, variance in moments]
        total, count = None, 0
        for chunk, real in self._batches(self.tune_images):
            if real < self.batch:
                break  # A padded batch would bias the statistics.
            values = self.session.run(fetch, {self.ops['eval_images']: chunk})
            total = values if total is None else [
                (m0 + m1, v0 + v1) for (m0, v0), (m1, v1) in zip(total, values)]
            count += 1
        return [(m / count, v / count) for m, v in total]

    def _predict_tuned(self, kind):
        """Predictions with re-estimated BN statistics; the model's own statistics are restored."""
        targets = [(mean_var, var_var) for mean_var, var_var, _, _ in self.ops['moments_raw']]
        saved = self.session.run(targets)
        try:
            self._set_statistics(self._estimate_moments(kind))
            return {name: self.predict(images, kind) for name, (images, _) in self.eval_sets.items()}
        finally:
            self._set_statistics(saved)

    def _set_statistics(self, pairs):
        """Overwrite the moving (mean, variance) of every batch-norm layer, in moments order."""
        placeholders, assign = self.ops['set_statistics']
        values = [value for pair in pairs for value in pair]
        self.session.run(assign, dict(zip(placeholders, values)))

    def evaluate(self):
        """The accuracy table plus per-class and precision/recall/F1 metrics of the EMA model."""
        predictions = collections.OrderedDict()
        for kind in ('raw', 'ema'):
            predictions[kind] = {name: self.predict(images, kind)
                                 for name, (images, _) in self.eval_sets.items()}
        if self.tune_images is not None and len(self.tune_images) >= self.batch:
            for kind in ('raw', 'ema'):
                predictions['tuned_' + kind] = self._predict_tuned(kind)
        table = collections.OrderedDict(
            (row, collections.OrderedDict((name, _accuracy(probs, self.eval_sets[name][1]))
                                          for name, probs in by_set.items()))
            for row, by_set in predictions.items())
        report = dict(table=table)
        valid = self.eval_sets.get('valid')
        if valid is not None and len(valid[1]):
            report['valid_loss'] = cross_entropy(predictions['ema']['valid'], valid[1])
        report.update(class_metrics(predictions['ema']['test'], self.eval_sets['test'][1],
                                    self.class_names))
        return report


def cross_entropy(probs, labels):
    """Mean cross-entropy of predicted probabilities against integer labels (the EMA valid loss)."""
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def _accuracy(probs, labels):
    if not len(labels):
        return float('nan')
    return float((probs.argmax(1) == labels).mean() * 100)


def class_metrics(probs, labels, class_names):
    """Per-class accuracy and macro / weighted precision, recall and F1 (percent)."""
    from sklearn import metrics  # here: a second of start-up that a refused command never needs
    predicted = probs.argmax(1)
    per_class = collections.OrderedDict()
    for index, name in enumerate(class_names):
        members = labels == index
        per_class[name] = float((predicted[members] == index).mean() * 100) if members.any() else None
    out = dict(per_class_test_accuracy=per_class)
    for average in ('macro', 'weighted'):
        p, r, f, _ = metrics.precision_recall_fscore_support(
            labels, predicted, labels=list(range(len(class_names))), average=average, zero_division=0)
        out.update({'precision_' + average: p * 100, 'recall_' + average: r * 100,
                    'f1_' + average: f * 100})
    return out


def format_table(table):
    """The result table of docs/design.md section 4."""
    lines = ['%16s %8s %8s %8s' % ('', 'labeled', 'valid', 'test')]
    for row, values in table.items():
        cells = ['%.2f' % values[s] if not np.isnan(values[s]) else '-' for s in SUBSETS]
        lines.append('%16s %8s %8s %8s' % tuple([row] + cells))
    return '\n'.join(lines) + '\n'


def write_report(folder, report, step):
    """result.txt (the table) and stats.json (everything) in the run folder, atomically."""
    write_text_atomic(run_folder.result_path(folder), format_table(report['table']))
    stats = dict(report, step=int(step), kimg=step / 1024.)
    write_text_atomic(run_folder.stats_path(folder), json.dumps(_no_nan(stats), indent=2) + '\n')


def _no_nan(value):
    """JSON has no NaN: accuracies of empty sets become null."""
    if isinstance(value, dict):
        return collections.OrderedDict((k, _no_nan(v)) for k, v in value.items())
    if isinstance(value, float) and value != value:
        return None
    return value


def summary_values(report):
    """(tag, value) pairs for TensorBoard: accuracy/{subset} is the EMA row, as in MixMatch."""
    for row, values in report['table'].items():
        for subset, value in values.items():
            if not np.isnan(value):
                yield ('accuracy/%s' % subset if row == 'ema' else 'accuracy/%s/%s' % (row, subset)), value
    for name, value in report['per_class_test_accuracy'].items():
        if value is not None:
            yield 'class_accuracy/%s' % name, value
    if 'valid_loss' in report:
        yield 'losses/valid', report['valid_loss']
    for key in ('precision', 'recall', 'f1'):
        for average in ('macro', 'weighted'):
            yield 'metrics/%s_%s' % (key, average), report['%s_%s' % (key, average)]
