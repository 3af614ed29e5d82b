"""Small helpers shared by the library and the entry points."""

import atexit
import contextlib
import errno
import hashlib
import math
import functools
import os
import re
import sys
import threading


class UserError(Exception):
    """A problem with the user's input or files; entry points print it as one line and exit 1."""


class Stopped(Exception):
    """A run stopped on request after saving; entry points print the line and exit `status`."""

    def __init__(self, line, status):
        super(Stopped, self).__init__(line)
        self.status = status


# How a failed write reads when the disk is full, over quota, read-only or not ours; TensorFlow's
# file errors carry the same strerror text as OSError.
WRITE_PROBLEMS = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES))


def write_problem(error):
    """The strerror text of a full-disk / quota / read-only / permission failure, else ''."""
    text = str(error)
    for problem in WRITE_PROBLEMS:
        if problem.lower() in text.lower():
            return problem
    return ''


# The lines of a TensorFlow error message that say where, not what (TF 2.x adds a Python stack
# and node lines around the cause).
_WHERE_LINE = re.compile(r'^\s*(File "|Detected at|Node: |Graph execution error|\[\[|Original stack|'
                         r'Errors may have originated|$)')


def error_text(error):
    """What an exception says, on one line of at most 200 characters (no stack or node lines)."""
    text = str(getattr(error, 'message', None) or error)
    lines = [line for line in text.splitlines() if not _WHERE_LINE.match(line)]
    return ' '.join(' '.join(lines or [text]).split())[:200]


def ml_data_dir():
    """The data root: $ML_DATA, or ./data when unset."""
    return os.environ.get('ML_DATA') or './data'


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary name beside `path`; rename it to `path` only when the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, '.%s.tmp-%d' % (os.path.basename(path), os.getpid()))
    try:
        with write_problems_reported(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def write_problems_reported(path):
    """A full disk, quota, read-only or forbidden folder met inside: one UserError naming `path`
    (written under a temporary name, so `path` itself is as it was)."""
    try:
        yield
    except Exception as e:  # pylint: disable=broad-except  # re-raised unless a disk problem
        problem = '' if isinstance(e, UserError) else write_problem(e)
        if not problem:
            raise
        raise UserError('could not write %s: %s; %s was left as it was (free space there, or '
                        'write elsewhere, then rerun)' % (path, problem, os.path.basename(path)))


def file_md5(path):
    """Hex MD5 of a file, read in 1 MiB blocks."""
    digest = hashlib.md5()
    with open(path, 'rb') as f:
        for block in iter(functools.partial(f.read, 1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path, text):
    """Write a whole text file under a temporary name, then rename it into place."""
    with atomic_output(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def cli_main(main):
    """Wrap an absl `main(argv)` so a UserError becomes one line on stderr and exit status 1."""
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except UserError as e:
            sys.stderr.write('error: %s\n' % e)
            sys.stderr.flush()
            sys.exit(1)
        except Stopped as e:
            print(e)
            sys.stdout.flush()
            sys.exit(e.status)
    return wrapped


def ilog2(x):
    """ceil(log2(x)), as the reference's ilog2 (exact for powers of two)."""
    return int(math.ceil(math.log2(x) - 1e-9))


# TensorFlow's C++ log lines (TF 2.x's absl format `I0000 00:00:1732871234.180774  6401 file.cc:12]`,
# TF 1.15's `2026-11-30 12:34:56.789012: W tensorflow/file.cc:12]`) that TF_CPP_MIN_LOG_LEVEL does not
# silence in recent releases: start-up notes, grappler's "remapper failed" (an optional rewrite it
# skips, the graph then runs unchanged), CUDA plugin registrations. A run's real errors reach Python
# as exceptions, printed as one line; fatal (F) lines, said just before an abort, still pass.
_NATIVE_HEADER = (br'(?:[IWE]\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\]'
                  br'|\d{4}-\d\d-\d\d [\d:.]+: [IWE] [^\s\]]+:\d+\]'
                  br'|WARNING: All log messages before absl::InitializeLog\(\))')
NATIVE_LOG_LINE = re.compile(_NATIVE_HEADER + br'[^\n]*\n')  # anywhere: after a bar's partial line too
_NATIVE_LOG_TAIL = re.compile(_NATIVE_HEADER + br'[^\n]*\Z')  # a line whose end has not come


def drop_native_lines(text, final=False):
    """(what to show, what to hold): `text` without its complete native log lines, cut after its
    last line end; `final`: nothing held, and a native line still without its end dropped too."""
    kept = NATIVE_LOG_LINE.sub(b'', text)
    if final:
        return _NATIVE_LOG_TAIL.sub(b'', kept), b''
    cut = max(kept.rfind(b'\n'), kept.rfind(b'\r')) + 1
    return kept[:cut], kept[cut:]


def quiet_native_logs():
    """Drop TensorFlow's C++ log lines from this process's stderr (fd 2), wherever they land.

    stderr is routed through a pipe whose reader thread forwards everything else unchanged;
    REALMIX_NATIVE_LOGS=1 keeps everything. Call it once, in an entry point.
    """
    if os.environ.get('REALMIX_NATIVE_LOGS') == '1':
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        # Text waits for its line end (\n, or the \r of a progress bar's next redraw), so a
        # native line, after a bar's partial line too, is matched whole wherever the pipe cut it.
        held = b''
        while True:
            chunk = os.read(read_end, 1 << 16)
            shown, held = drop_native_lines(held + chunk, final=not chunk)
            if shown:
                os.write(original, shown)
            if not chunk:
                os.close(read_end)
                return

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()

    def restore():
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the reader drains and stops
        thread.join(timeout=5)
    atexit.register(restore)
