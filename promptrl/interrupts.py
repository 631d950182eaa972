"""Graceful stop: SIGTERM or Ctrl-C ends training at the next step boundary, with a checkpoint.

Without it a `kill` or Ctrl-C loses every step since the last periodic checkpoint (up to
`checkpoint_every - 1` of them, minutes to hours of work on a slow machine). With it the
step in progress is finished, a checkpoint of that state is written, and the process exits
with 128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C), the shell's convention for
"stopped by a signal". Launching the same command again resumes there. A second signal stops
at once, as if this module were not there.

Only signals whose handler is still Python's default are taken over: under submitit (SLURM)
SIGTERM belongs to submitit, which ignores it and requeues the job on its USR2 instead; taking
it would end a preempted job without the requeue. Signals reach Python only in the main thread,
so elsewhere (a launcher's worker thread) nothing is installed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_HANDLERS = (signal.SIG_DFL, signal.default_int_handler)


class Interrupted(Exception):
    """Training stopped on a signal, its state saved; not a failure (a sweep relaunched over the
    same directory resumes the job rather than rerunning it)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequests:
    """`with StopRequests() as stop:` ... `if stop.signum: ...` at each step boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            return self
        for s in SIGNALS:
            previous = signal.getsignal(s)
            if previous in DEFAULT_HANDLERS:
                self._previous[s] = previous
                signal.signal(s, self._request)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()

    def _request(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now, the default way
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: stopping after the current step with a checkpoint (send it again to stop at once)",
                    signal.Signals(signum).name)
