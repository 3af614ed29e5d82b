"""plot_curves.py: accuracy and loss curves of several runs on one PNG, from their event files."""

import os
import subprocess
import sys

import pytest
import tensorflow.compat.v1 as tf
from PIL import Image

from conftest import ROOT
from libml.utils import UserError

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import plot_curves  # noqa: E402

SCRIPT = os.path.join(ROOT, 'scripts', 'plot_curves.py')


def write_run(run_dir, kimgs, with_unlabeled_loss=True, accuracy=40.):
    """Event files as the trainer writes them: EMA accuracies and losses at kimgs x 1024 steps."""
    with tf.Graph().as_default():  # FileWriter needs graph mode; the test process is eager
        writer = tf.summary.FileWriter(os.path.join(run_dir, 'tf'))
    for i, kimg in enumerate(kimgs):
        values = {'accuracy/test': accuracy + i, 'accuracy/valid': 41. + i, 'accuracy/raw/test': 30.,
                  'losses/xe': 1. / (i + 1), 'progress/kimg': kimg}
        if with_unlabeled_loss:
            values['losses/l2u'] = 0.1 / (i + 1)
        summary = tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value)
                                    for tag, value in values.items()])
        writer.add_summary(summary, kimg * 1024)
    writer.close()
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """A RealMix-like run and a supervised-like one (no unlabeled loss)."""
    return [write_run(str(tmp_path / 'cifar10.1@250-500' / 'realmix_a'), [1, 2, 3]),
            write_run(str(tmp_path / 'cifar10.1@250-500' / 'supervised_b'), [1, 2], False)]


def run_script(args):
    return subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def test_cli_writes_a_png_of_all_runs(runs, tmp_path):
    out = str(tmp_path / 'curves.png')
    result = run_script(runs + ['--out', out, '--labels=realmix,supervised'])
    assert result.returncode == 0, result.stderr
    assert 'wrote %s' % out in result.stdout
    with Image.open(out) as image:
        assert image.format == 'PNG' and image.size == (1100, 800)
    assert [f for f in os.listdir(str(tmp_path)) if '.tmp' in f] == []


def test_curves_are_against_kimg_and_missing_tags_are_left_out(runs):
    realmix, supervised = plot_curves.load_curves(runs[0]), plot_curves.load_curves(runs[1])
    assert realmix['accuracy/test'] == ([1., 2., 3.], [40., 41., 42.])
    assert realmix['losses/l2u'][1] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert set(supervised) == {'accuracy/test', 'accuracy/valid', 'losses/xe'}


def test_legend_names_default_to_run_folders(runs):
    figure = plot_curves.draw([plot_curves.load_curves(r) for r in runs],
                              [plot_curves.run_label(r + '/') for r in runs])
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ['realmix_a', 'supervised_b']
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[0].startswith('test accuracy') and titles[3].startswith('unlabeled loss')
    assert len(figure.axes[3].get_lines()) == 1  # only the RealMix run has an unlabeled loss


def test_a_folder_without_events_is_one_line_and_writes_nothing(runs, tmp_path):
    out = str(tmp_path / 'curves.png')
    result = run_script([runs[0], str(tmp_path), '--out', out])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        'error: %s has no TensorBoard event files under tf/; is it a run folder '
        '(TRAIN_DIR/DATASET/EXPERIMENT)?' % tmp_path]
    assert not os.path.exists(out)


@pytest.mark.parametrize('out,labels,message', [
    ('curves.jpg', None, 'give a .png file'),
    ('curves.png', ['only_one'], '--labels has 1 names for 2 run folders')])
def test_bad_output_name_or_label_count(runs, tmp_path, out, labels, message):
    with pytest.raises(UserError, match=message):
        plot_curves.plot_runs(runs, str(tmp_path / out), labels)
    assert not os.path.exists(str(tmp_path / out))


def test_an_arm_over_three_splits_is_its_median_and_range_at_the_steps_all_have(tmp_path):
    runs = [write_run(str(tmp_path / ('s%d' % seed)), kimgs, accuracy=accuracy)
            for seed, kimgs, accuracy in ((1, [1, 2, 3], 40.), (2, [1, 2, 3], 70.), (3, [1, 2], 50.))]
    kimg, median, low, high = plot_curves.split_band(runs)
    assert kimg == [1., 2.]  # the third split stops at 2 kimg
    assert (list(median), list(low), list(high)) == ([50., 51.], [40., 41.], [70., 71.])
    out = plot_curves.plot_split_medians({'realmix': runs, 'fixmatch': runs[:2]},
                                         str(tmp_path / 'medians.png'), 'a study')
    with Image.open(out) as image:
        assert image.format == 'PNG' and image.size[0] > 500
