"""The evaluation routine: padded batches, tuned batch norm that leaves the model unchanged, metrics."""

import json

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from libml import evaluation, models

tf.disable_v2_behavior()


def test_class_metrics_against_hand_computed_values():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    probs = np.eye(3)[predicted]
    out = evaluation.class_metrics(probs, labels, ['a', 'b', 'c'])
    assert out['per_class_test_accuracy'] == {'a': 50.0, 'b': 100.0, 'c': 50.0}
    # precision per class: a 1/2, b 2/3, c 1/1; recall: 1/2, 1, 1/2
    assert out['precision_macro'] == pytest.approx(100 * (0.5 + 2 / 3. + 1) / 3)
    assert out['recall_macro'] == pytest.approx(100 * 2 / 3.)


def test_table_formatting_and_stats_json_with_an_empty_validation_set(tmp_path):
    table = {'raw': {'labeled': 100., 'valid': float('nan'), 'test': 86.05}}
    text = evaluation.format_table(table)
    assert text.splitlines() == ['                  labeled    valid     test',
                                 '             raw   100.00        -    86.05']
    report = dict(table=table, per_class_test_accuracy={}, precision_macro=1.)
    evaluation.write_report(str(tmp_path), report, 2048)
    stats = json.loads((tmp_path / 'stats.json').read_text())
    assert stats['table']['raw']['valid'] is None and stats['kimg'] == 2
    assert (tmp_path / 'result.txt').read_text() == text


@pytest.fixture
def evaluator():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, [20, 8, 8, 1]).astype(np.uint8)
    labels = np.arange(20) % 3
    with tf.Graph().as_default():
        classify = models.make_classifier('smallconv', 3, scales=1, filters=4, repeat=1)
        ops = evaluation.evaluation_towers(classify, tf.placeholder(tf.float32, [8, 8, 8, 1]),
                                           tf.train.ExponentialMovingAverage(0.999))
        session = tf.Session()
        session.run(tf.global_variables_initializer())
        sets = {'labeled': (images[:5], labels[:5]), 'valid': (images[:0], labels[:0]),
                'test': (images, labels)}
        yield evaluation.Evaluator(session, ops, sets, images, ['a', 'b', 'c']), session
        session.close()


def test_predictions_do_not_depend_on_batch_padding(evaluator):
    evaluator, _ = evaluator
    images = evaluator.eval_sets['test'][0]
    whole = evaluator.predict(images, 'raw')  # 20 images: batches of 8, 8 and a padded 4
    assert whole.shape == (20, 3)
    np.testing.assert_allclose(evaluator.predict(images[16:], 'raw'), whole[16:], rtol=1e-5)


def test_tuned_rows_reestimate_statistics_and_leave_the_model_unchanged(evaluator):
    evaluator, session = evaluator
    before = session.run(tf.global_variables())
    report = evaluator.evaluate()
    after = session.run(tf.global_variables())
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)
    assert list(report['table']) == ['raw', 'ema', 'tuned_raw', 'tuned_ema']
    assert np.isnan(report['table']['raw']['valid'])
    # Fresh moving statistics (mean 0, variance 1) differ from the re-estimated ones.
    images = evaluator.eval_sets['test'][0]
    raw = evaluator.predict(images, 'raw')
    tuned = evaluator._predict_tuned('raw')['test']
    assert np.abs(raw - tuned).max() > 1e-3
