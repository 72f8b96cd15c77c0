"""The launcher interface: execute a list of planned jobs somewhere, reporting as they go.

A launcher decides where and how many jobs run at once (this process, worker processes, a cluster); what
one job does is `fairbench.runs.execute.execute`, the same everywhere. A `Reporter` receives the events, so the
terminal display, a log file and tests all observe runs the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

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


class Launcher(ABC):
    """Executes planned jobs; subclasses register in `fairbench.launchers.LAUNCHERS` by `name`."""

    name: ClassVar[str] = ""

    @abstractmethod
    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        """Run every job (skipping finished ones) and return one result per job, in order."""


def set_aside_finished(jobs: list[PlannedJob], reporter: Reporter) -> tuple[dict[int, JobResult], list[int]]:
    """Report every job that already has a valid result as skipped; return those results by index and the
    indices of the jobs still to run (what a launcher hands to its workers or its cluster)."""
    from fairbench.runs.execute import JobResult

    results: dict[int, JobResult] = {}
    pending: list[int] = []
    for index, planned in enumerate(jobs):
        if planned.state() == "done":
            results[index] = JobResult(planned, "skipped", "finished run with this config exists")
            reporter.job_finished(results[index])
        else:
            pending.append(index)
    return results, pending
