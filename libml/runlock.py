"""One writer per run folder: a lock file RUN/.lock holding the writer's PID and host.

The lock is an flock on that file, so the kernel releases it when its process dies however it
dies; the PID and host inside only name the holder. Where the file system has no flock (some
network mounts), a holder whose PID is gone on this host is taken over.
"""

import errno
import json
import os
import socket
import time

from libml.utils import UserError

try:
    import fcntl
except ImportError:  # not POSIX: the PID check alone
    fcntl = None

LOCK_NAME = '.lock'


def _pid_alive(pid):
    """Whether a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


def _read_holder(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (IOError, OSError, ValueError):
        return {}


def _holder_text(holder):
    return 'PID %s on host %s' % (holder.get('pid', '?'), holder.get('host', '?'))


class RunLock(object):
    """Held while a process trains in `run_dir`; `acquire` refuses in one UserError line when
    another live process holds it."""

    def __init__(self, run_dir, log=print):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.log = log
        self._fd = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        previous = _read_holder(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock(fd, previous)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if previous.get('pid'):  # a holder that did not release the lock: it was killed
            self.log('Taking over the lock %s left by %s (that process is gone)'
                     % (self.path, _holder_text(previous)))
        me = dict(pid=os.getpid(), host=socket.gethostname(), since=time.strftime('%Y-%m-%d %H:%M:%S'))
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + '\n').encode('utf-8'))
        return self

    def _lock(self, fd, previous):
        refusal = ('%s is in use by another training process (%s, lock %s); wait for it to end '
                   'or stop it, or use another --train_dir')
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except (IOError, OSError) as e:
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    holder = _read_holder(self.path) or previous
                    raise UserError(refusal % (os.path.dirname(self.path), _holder_text(holder),
                                               self.path))
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        # No flock here: a holder on this host whose PID still runs keeps the folder.
        pid, host = previous.get('pid'), previous.get('host')
        if pid and (host != socket.gethostname() or _pid_alive(int(pid))):
            raise UserError(refusal % (os.path.dirname(self.path), _holder_text(previous), self.path))

    def release(self):
        """Empty and unlock the file (kept: removing it would race with a waiting process)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # a full or read-only disk: the kernel lock is what counts, and it goes below
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
