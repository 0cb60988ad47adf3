"""SIGINT / SIGTERM in any phase of a run become :class:`RunInterrupted`, so the run still writes its result.

A scheduler that preempts a job sends SIGTERM; a person presses Ctrl-C (SIGINT). Either way the run must
leave a result file with status ``interrupted`` (the phase, the steps done, the losses so far) and exit
non-zero: 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a signal death.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(BaseException):
    """Raised from the signal handler. A BaseException, so no ``except Exception`` on the way swallows it, and
    not a KeyboardInterrupt, which Lightning turns into ``SystemExit(1)``."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptionGuard:
    """Turns the first SIGINT / SIGTERM into :class:`RunInterrupted`; after that, or once :meth:`shield` is
    called (the result file is being written), signals are logged and ignored."""

    def __init__(self) -> None:
        self.raising = True

    def shield(self) -> None:
        self.raising = False

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if not self.raising:
            log.warning("%s received while the run is writing its result; finishing that first", name)
            return
        self.raising = False
        log.warning("%s received: stopping the run and writing its result", name)
        raise RunInterrupted(signum)


@contextlib.contextmanager
def interruption_guard() -> Iterator[InterruptionGuard]:
    """Within the block, SIGINT and SIGTERM raise :class:`RunInterrupted` (see :class:`InterruptionGuard`).
    Previous handlers come back on exit. Outside the main thread signals cannot be handled, so there the
    block only yields a guard that nothing calls."""
    handler = InterruptionGuard()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return

    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield handler
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
