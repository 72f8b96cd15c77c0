"""The local sequential launcher: every job in this process, one after another, sharing loaded data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fairbench.launchers.base import Launcher, Reporter, failure_line

if TYPE_CHECKING:
    from fairbench.runs.execute import JobResult
    from fairbench.runs.jobs import PlannedJob


class SequentialLauncher(Launcher):
    """One job at a time in the calling process; datasets load once and serve every job that shares them. A job
    that raises fails alone (one line, failure.json), as under the worker pool; the next job starts."""

    name = "local"

    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        from fairbench.runs.execute import DataCache, JobResult, execute, tidy_done

        cache = DataCache()
        results: list[JobResult] = []
        for index, planned in enumerate(jobs, start=1):
            if planned.state() == "done":
                tidy_done(planned)
                result = JobResult(planned, "skipped", "finished run with this config exists")
            else:
                reporter.job_started(planned, index, len(jobs))
                try:
                    result = execute(planned, data_cache=cache, log=reporter.log,
                                     progress=lambda done, total, _p=planned: reporter.step(_p, done, total),
                                     on_epoch=lambda record, _p=planned: reporter.epoch_finished(_p, record))
                except (Exception, SystemExit) as exc:  # a stop (Interrupted, Ctrl-C) still ends the launch
                    result = JobResult(planned, "failed", failure_line(exc))
            reporter.job_finished(result)
            results.append(result)
        return results


class LocalLauncher(Launcher):
    """`--launcher local`: the sequential launcher for one worker, else a pool of worker processes on this machine.

    `workers` processes on whatever device torch picks, or one per GPU in `gpus` (times `runs_per_gpu`), each
    seeing only its GPU. One worker without --gpus keeps everything in this process, as before.
    """

    name = "local"

    def __init__(self, workers: int = 1, gpus: list[str] | None = None, runs_per_gpu: int = 1) -> None:
        from fairbench.launchers.workers import worker_slots

        self.slots = worker_slots(workers, gpus, runs_per_gpu)  # ValueError: a one-line message
        self.in_process = workers == 1 and not gpus

    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        if self.in_process:
            return SequentialLauncher().launch(jobs, reporter)
        from fairbench.launchers.workers import WorkerPoolLauncher

        return WorkerPoolLauncher(self.slots).launch(jobs, reporter)
