"""libml/utils.py: the console filter of TensorFlow's native log lines."""
import os
import subprocess
import sys

from conftest import ROOT
from libml.utils import drop_native_lines

REMAPPER = (b'E0000 00:00:1732871234.123456    4242 meta_optimizer.cc:966] remapper failed: '
            b'INVALID_ARGUMENT: Mutation::Apply error: fanout \'x\' exist for missing node \'y\'.\n')
START_UP = b'I0000 00:00:1795974933.180774    6401 mlir_graph_optimization_pass.cc:437] MLIR V1\n'
TF115_WARNING = (b'2026-11-30 12:34:56.789012: W tensorflow/core/framework/cpu_allocator_impl.cc:81] '
                 b'Allocation of 1 exceeds 10% of system memory.\n')
BAR = b'\rEpoch 1/1:  33%|###3      | 512/1536 [00:02<00:04, 231.1img/s]'

# A child that writes as a training run does: the bar through Python's sys.stderr without a line
# end, then a native line through the same fd 2 (as TensorFlow's C++ side), then the bar again.
CHILD = '''import os, sys, time
sys.path.insert(0, %r)
from libml.utils import quiet_native_logs
quiet_native_logs()
bar, lines = %r, %r
sys.stderr.write(bar.decode()); sys.stderr.flush()
time.sleep(%s)  # the bar's partial line already sits in the pipe, held for its line end
for line in lines:
    os.write(2, line)
sys.stderr.write(bar.decode() + "\\nerror: ours\\n")
'''


def run_child(lines, pause=0., native_logs=''):
    code = CHILD % (ROOT, BAR, lines, pause)
    return subprocess.run([sys.executable, '-c', code], stderr=subprocess.PIPE, timeout=120,
                          env=dict(os.environ, REALMIX_NATIVE_LOGS=native_logs)).stderr


def test_a_native_line_after_a_progress_bars_partial_line_never_reaches_the_console():
    for pause in (0., 0.5):  # at once (one read holds both), and after the bar was shown
        shown = run_child([REMAPPER, START_UP, TF115_WARNING], pause)
        assert shown == BAR + BAR + b'\nerror: ours\n', (pause, shown)


def test_realmix_native_logs_1_shows_every_line_where_it_came():
    shown = run_child([REMAPPER, START_UP], native_logs='1')
    assert shown == BAR + REMAPPER + START_UP + BAR + b'\nerror: ours\n'


def test_errors_warnings_and_notes_go_on_either_runtime_but_fatal_lines_and_ours_stay():
    fatal = b'F0000 00:00:1732871234.123456    4242 session.cc:12] Check failed: x\n'
    real_error = b'E0000 00:00:1732871234.123456    4242 cuda_dnn.cc:8310] Unable to register\n'
    tf115_error = b'2026-11-30 12:34:56.789012: E tensorflow/core/common_runtime/a.cc:1] b\n'
    text = START_UP + b'error: ours\n' + real_error + tf115_error + fatal + b'Epoch 1'
    assert drop_native_lines(text) == (b'error: ours\n' + fatal, b'Epoch 1')


def test_a_native_line_cut_by_the_pipe_is_dropped_once_its_end_comes():
    held = b''
    shown = []
    for piece in (BAR, REMAPPER[:30], REMAPPER[30:] + BAR, b'\n'):
        out, held = drop_native_lines(held + piece)
        shown.append(out)
    assert b''.join(shown) + held == BAR + BAR + b'\n'
    # Nothing more comes: a line still without its end is shown, unless it is a native one.
    assert drop_native_lines(BAR + REMAPPER[:80], final=True) == (BAR, b'')
    assert drop_native_lines(b'Epoch 1', final=True) == (b'Epoch 1', b'')


def test_tensorflows_own_native_lines_are_dropped_on_this_runtime():
    # Every native line TensorFlow logs (TF_CPP_MIN_LOG_LEVEL=0), in the format of this runtime.
    code = ('import sys; sys.path.insert(0, %r)\nimport libml\n'
            'from libml.utils import quiet_native_logs\nquiet_native_logs()\n'
            'import tensorflow.compat.v1 as tf\ntf.disable_v2_behavior()\n'
            'with tf.Session() as s:\n    print(s.run(tf.reduce_sum(tf.ones([2, 2]))))\n' % ROOT)

    def stderr_of(native_logs):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0', REALMIX_NATIVE_LOGS=native_logs)
        done = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, timeout=180)
        assert done.stdout.strip() == b'4.0', done.stderr
        return done.stderr.decode('utf-8', 'replace')

    native = [line for line in stderr_of('1').splitlines() if drop_native_lines(
        line.encode() + b'\n') == (b'', b'')]
    assert native, 'this TensorFlow logged no native line at level 0: the test proves nothing'
    assert not [line for line in stderr_of('').splitlines() if line in native]
