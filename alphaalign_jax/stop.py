"""Stop signals (SIGTERM on a TPU preemption, SIGINT): noted when they come, acted on at the
next point where the run can end cleanly."""

from __future__ import annotations

import signal
import threading

from absl import logging


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGINT): the run ends cleanly; the message says what was saved."""


class StopSignal:
    """Installs the handlers (in the main thread) and remembers the signal that came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        logging.warning("signal %d received: will checkpoint after this step and exit", signum)
        self.signum = signum

    @property
    def received(self) -> bool:
        return self.signum is not None

    def check(self, where: str) -> None:
        """Raise :class:`Preempted` if a signal came, naming what was cut short (unsaved)."""
        if self.received:
            raise Preempted(f"preempted {where}: nothing was saved (it is redone alike on "
                            "resume); re-run the same command to resume")
