"""Small helpers shared by the library and the entry points."""

import contextlib
import math
import functools
import os
import sys


class UserError(Exception):
    """A problem with the user's input or files; entry points print it as one line and exit 1."""


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
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    return wrapped


def ilog2(x):
    """Integer log2 of a power of two."""
    return int(round(math.log2(x)))
