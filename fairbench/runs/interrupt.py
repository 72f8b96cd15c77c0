"""SIGINT and SIGTERM: unwind cleanly (claims released, no half-written file) and say how to continue.

`catch_signals` turns the first SIGINT/SIGTERM into an `Interrupted` exception raised in the main thread;
`fairbench.runs.execute` notes on it which run stopped and how many epochs its saved state holds, and the command
prints one line from it (`Interrupted.message`) and exits 128 + the signal number (130, 143). A second
signal while unwinding exits at once. Inside `uninterrupted()` (saving an epoch's state and noting it) the
first signal waits until the block ends, so a stop never throws away an epoch that was being saved.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StoppedRun:
    """Where an interrupted run stands: its label, folder, and the epochs its saved state holds."""

    label: str
    run_dir: Path
    epochs_done: int
    epochs: int


class Interrupted(BaseException):
    """Raised by the signal handler; a BaseException so that `except Exception` cleanups do not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run: StoppedRun | None = None
        self.elsewhere: list[str] = []  # labels of the runs worker processes were training when it came

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self, command: str) -> str:
        name = signal.Signals(self.signum).name
        run = self.run
        if run is None and self.elsewhere:
            shown = ", ".join(self.elsewhere[:3]) + (f" and {len(self.elsewhere) - 3} more" if len(self.elsewhere) > 3
                                                     else "")
            return (f"interrupted ({name}) while worker processes were training {len(self.elsewhere)} run(s) "
                    f"({shown}); each resumes from its last saved epoch; continue with: {command}")
        if run is None:
            return f"interrupted ({name}) before any run was training; continue with: {command}"
        if run.epochs_done >= run.epochs:
            where = f"all {run.epochs} epochs are saved, it resumes with the final evaluation"
        elif run.epochs_done:
            where = f"it resumes at epoch {run.epochs_done + 1}/{run.epochs} from the state saved in {run.run_dir}"
        else:
            where = f"no epoch was complete, it restarts at epoch 1/{run.epochs}"
        return f"interrupted ({name}): {run.label}: {where}; continue with: {command}"


class _Critical:
    depth = 0
    pending: int | None = None


_critical = _Critical()


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Defer a first SIGINT/SIGTERM (under `catch_signals`) to the end of the block."""
    _critical.depth += 1
    try:
        yield
    finally:
        _critical.depth -= 1
        if not _critical.depth and _critical.pending is not None:
            signum, _critical.pending = _critical.pending, None
            raise Interrupted(signum)


@contextmanager
def catch_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise `Interrupted` in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, _frame) -> None:
        if fired:  # a second signal while unwinding (or while a save is deferring the first): stop now
            os._exit(128 + signum)
        fired.append(signum)
        if _critical.depth:
            _critical.pending = signum
            return
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
