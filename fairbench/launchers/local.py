"""The local launcher: jobs on this machine, in this process one after another, or in worker processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fairbench.launchers.base import Launcher, LauncherOption, Reporter, failure_line, register_launcher

if TYPE_CHECKING:
    from fairbench.runs.execute import JobResult
    from fairbench.runs.jobs import PlannedJob


def _comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@register_launcher("local", description="this machine: in this process, or in worker processes with "
                   "--workers/--gpus")
class LocalLauncher(Launcher):
    """`--launcher local`: every job in this process for one worker, else a pool of worker processes.

    `workers` processes on whatever device torch picks, or one per GPU in `gpus` (times `runs_per_gpu`), each
    seeing only its GPU. One worker without --gpus keeps everything in this process, sharing loaded data.
    """

    options = (
        LauncherOption("--workers", "workers", int, 1, short="-w", help="Local launcher: run this many jobs at once, "
                       "each in its own worker process (1: one after another in this process)."),
        LauncherOption("--gpus", "gpus", str, None, parse=_comma_list, help="Local launcher: one worker process per "
                       "listed GPU, e.g. 0,1,2,3; each sees only its GPU (CUDA_VISIBLE_DEVICES)."),
        LauncherOption("--runs-per-gpu", "runs_per_gpu", int, 1, help="With --gpus: worker processes per GPU "
                       "(small models can share one)."),
    )

    def __init__(self, workers: int = 1, gpus: list[str] | None = None, runs_per_gpu: int = 1) -> None:
        from fairbench.launchers.workers import worker_slots

        self.slots = worker_slots(workers, gpus, runs_per_gpu)  # ValueError: a one-line message
        self.in_process = workers == 1 and not gpus

    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        if self.in_process:
            return run_in_this_process(jobs, reporter)
        from fairbench.launchers.workers import WorkerPool

        return WorkerPool(self.slots).launch(jobs, reporter)


def run_in_this_process(jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
    """One job at a time in the calling process; datasets load once and serve every job that shares them. A job
    that raises fails alone (one line, failure.json), as under the worker pool; the next job starts."""
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
