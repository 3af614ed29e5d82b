"""Saved stops: SIGTERM / SIGINT ask the training loop to stop after its step and save."""

import os
import shlex
import signal
import sys
import threading


def signal_name(signum):
    """SIGTERM for 15, etc."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return 'signal %d' % signum


def default_resume_command():
    """This process's command line, quoted for a shell."""
    return ' '.join(shlex.quote(arg) for arg in [os.path.basename(sys.executable)] + sys.argv)


class StopSignals(object):
    """While active, SIGTERM and SIGINT ask the loop to stop after the current step; a second
    one stops at once (the default action). In other threads than the main one: inactive."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None        # the signal this process got
        self.stopped_at = None    # the step the loop stopped at, when it stopped early
        self._shared = False
        self._previous = {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_signal(self):
        """The signal the exit status tells: ours, or SIGTERM when another rank was asked."""
        return self.signum if self.signum is not None else signal.SIGTERM

    def _handle(self, signum, frame):
        del frame
        self.signum = signum
        for each in self.SIGNALS:  # the next one stops the process at once
            signal.signal(each, signal.SIG_DFL)
        sys.stderr.write('\n%s: stopping after this step and saving a checkpoint (send it again '
                         'to stop at once, unsaved)\n' % signal_name(signum))
        sys.stderr.flush()

    def share(self, session, stop_request):
        """Once asked to stop, set this process's stop request: the next step's vote tells every
        rank, so all stop after the same step."""
        if self.requested and not self._shared:
            stop_request.load(1., session)
            self._shared = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for each in self.SIGNALS:
                self._previous[each] = signal.signal(each, self._handle)
        return self

    def __exit__(self, *exc):
        for each, handler in self._previous.items():
            signal.signal(each, handler)
        self._previous = {}
