"""The launcher interface: execute a list of planned jobs somewhere, reporting as they go.

A launcher decides where and how many jobs run at once (this process, worker processes, a cluster); what
one job does is `fairbench.runs.execute.execute`, the same everywhere. A `Reporter` receives the events, so the
terminal display, a log file and tests all observe runs the same way. A launcher is a registered class
(`register_launcher`) that declares its own command-line options (`LauncherOption`): `fairbench run` offers each
registered launcher's options and passes the given ones to its constructor.
"""

from __future__ import annotations

import os
import sys
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from fairbench.registry import LAUNCHERS

if TYPE_CHECKING:
    from fairbench.runs.execute import JobResult
    from fairbench.runs.jobs import PlannedJob


class Reporter:
    """Receives what happens to jobs; every hook is optional (the default ignores it)."""

    def log(self, message: str) -> None:
        """A line for the user (rich markup allowed)."""

    def job_started(self, planned: PlannedJob, index: int, total: int) -> None:
        """A job begins executing (index counts from 1 among the jobs this launcher runs)."""

    def step(self, planned: PlannedJob, done: int, total: int) -> None:
        """Training progress of a running job, in optimiser steps."""

    def epoch_finished(self, planned: PlannedJob, record: dict[str, Any]) -> None:
        """One epoch's history record (loss terms, validation AUC, timings)."""

    def job_finished(self, result: JobResult) -> None:
        """A job is done, skipped or failed."""


@dataclass(frozen=True)
class LauncherOption:
    """One option of a launcher on `fairbench run`: `flag` (and `short`) on the command line, passed to the
    launcher's constructor as `field` (through `parse`, e.g. a comma list into a list) when given."""

    flag: str
    field: str
    type: type = str
    default: Any = None
    help: str = ""
    short: str | None = None
    parse: Callable[[Any], Any] | None = None

    @property
    def param(self) -> str:
        """The option's Python name (`--slurm-mem` → slurm_mem)."""
        return self.flag.lstrip("-").replace("-", "_")

    def value(self, raw: Any) -> Any:
        return self.parse(raw) if self.parse is not None else raw


class Launcher(ABC):
    """Executes planned jobs; subclass it, declare `options`, and decorate with `register_launcher`.

    `panel` names the --help section of its options (None: with run's own options). The contract every launcher
    keeps: one failed job never stops the others. A job that raises ends as a "failed" JobResult with one line
    (`failure_line`) and `execute` leaves failure.json in its folder; only a stop (Ctrl-C, SIGTERM) ends the launch
    early."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[LauncherOption, ...]] = ()
    panel: ClassVar[str | None] = None

    @abstractmethod
    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        """Run every job (skipping finished ones) and return one result per job, in order."""


def error_line(exc: BaseException) -> str:
    """`Type: message (at file.py:line)`: where the innermost frame of the traceback raised it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{_where(exc)}"


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""


def failure_line(exc: BaseException) -> str:
    """One line for a job that raised: an error fairbench raises for bad input says what and how to fix it, so its
    own message; a failed file operation names the path and what went wrong; anything else (a plugin's bug) its
    type, message and where it was raised."""
    from fairbench.files import describe_os_error

    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc)
    if isinstance(exc, _user_errors()):
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    if isinstance(exc, SystemExit):
        return f"the job called sys.exit({exc.code!r}){_where(exc)}"
    return error_line(exc)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is already the one line for the user (imported where they live)."""
    from fairbench.datasets.errors import DatasetError
    from fairbench.method import SettingsError
    from fairbench.registry import PluginError, UnknownNameError

    found: list[type[BaseException]] = [DatasetError, SettingsError, PluginError, UnknownNameError]
    for module, name in (("fairbench.models.backbones", "WeightsUnavailableError"),
                         ("fairbench.training.step", "TrainingDiverged")):
        if module in sys.modules:  # not loaded: nothing can have raised it
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def set_aside_finished(jobs: list[PlannedJob], reporter: Reporter) -> tuple[dict[int, JobResult], list[int]]:
    """Report every job that already has a valid result as skipped; return those results by index and the
    indices of the jobs still to run (what a launcher hands to its workers or its cluster)."""
    from fairbench.runs.execute import JobResult, tidy_done

    results: dict[int, JobResult] = {}
    pending: list[int] = []
    for index, planned in enumerate(jobs):
        if planned.state() == "done":
            tidy_done(planned)
            results[index] = JobResult(planned, "skipped", "finished run with this config exists")
            reporter.job_finished(results[index])
        else:
            pending.append(index)
    return results, pending


L = TypeVar("L", bound=type[Launcher])


def register_launcher(name: str, *, description: str = "") -> Callable[[L], L]:
    """Class decorator that makes a `Launcher` subclass available as `fairbench run --launcher NAME`."""
    return LAUNCHERS.register(name, description)
