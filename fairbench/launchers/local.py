"""The local sequential launcher: every job in this process, one after another, sharing loaded data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fairbench.launchers.base import Launcher, Reporter

if TYPE_CHECKING:
    from fairbench.execute import JobResult
    from fairbench.jobs import PlannedJob


class SequentialLauncher(Launcher):
    """One job at a time in the calling process; datasets load once and serve every job that shares them."""

    name = "local"

    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        from fairbench.execute import DataCache, JobResult, execute

        cache = DataCache()
        results: list[JobResult] = []
        for index, planned in enumerate(jobs, start=1):
            if planned.state() == "done":
                result = JobResult(planned, "skipped", "finished run with this config exists")
            else:
                reporter.job_started(planned, index, len(jobs))
                result = execute(planned, data_cache=cache, log=reporter.log,
                                 progress=lambda done, total, _p=planned: reporter.step(_p, done, total),
                                 on_epoch=lambda record, _p=planned: reporter.epoch_finished(_p, record))
            reporter.job_finished(result)
            results.append(result)
        return results
