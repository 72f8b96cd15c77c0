"""The SLURM launcher: the planned jobs that are not done go out as one job array through submitit.

Each array task runs a `SlurmTask`, plain data (the planned job and a thread count) that pickles to the
cluster. It loads the job's plugins and calls `fairbench.runs.execute.execute`, as every launcher does, so claims,
resume and result checks behave the same on a cluster. On a time limit or a preemption submitit calls its
`checkpoint()`, which hands submitit the same task to requeue; the requeued task calls `execute` again, which
continues from the run's last saved epoch. Submission files and logs live in `<out>/slurm/`.

A request no node can satisfy (more CPUs, memory or GPUs per task than any node of the partition has) would wait
in the queue forever without a word: it is checked against `sinfo` before anything is submitted, and while
waiting, a task held for a reason other than ordinary queueing (squeue's pending reason) is reported once.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairbench.launchers.base import Launcher, LauncherOption, Reporter, register_launcher, set_aside_finished

if TYPE_CHECKING:
    from fairbench.runs.execute import JobResult
    from fairbench.runs.jobs import PlannedJob

MISSING_SUBMITIT = "--launcher slurm needs submitit; install it with: pip install 'fairbench-medvlm[slurm]'"
DEFAULT_TIME_MIN = 60
LOG_FOLDER = "slurm"  # under the results root
# SLURM states after which a task will not run again (a requeued task passes through PENDING/REQUEUED).
_FINAL = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT")
# Pending reasons that only mean "waiting its turn"; any other one is reported while waiting.
_QUEUEING = frozenset({"None", "Priority", "Resources", "BeginTime", "Dependency", "JobArrayTaskLimit",
                       "QOSMaxJobsPerUserLimit", "AssocMaxJobsLimit", "Prolog", "NodeDown", "Reservation"})
_UNITS_MB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def check_request(parameters: dict[str, Any], run: Any = subprocess.run) -> None:
    """Raise ValueError (one line, naming the option and the largest node) when no node of the partition `sinfo`
    lists can ever hold one task of `parameters`; nothing when sinfo cannot be asked (the wait reports reasons)."""
    try:
        done = run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    nodes = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 3]
    if done.returncode != 0 or not nodes:
        return
    wanted = parameters.get("partition")
    default = next((p.rstrip("*") for p, *_ in nodes if p.endswith("*")), None)
    partition = wanted or default
    if partition is None:
        return
    mine = [n for n in nodes if n[0].rstrip("*") == partition]
    if not mine:
        known = ", ".join(sorted({p.rstrip("*") for p, *_ in nodes}))
        raise ValueError(f"--slurm-partition {partition}: no such partition (sinfo lists {known})")
    where = f"partition {partition}" + ("" if wanted else " (the default)")
    cpus = max(_number(n[1]) for n in mine)
    want = parameters.get("cpus_per_task")
    if want and cpus and want > cpus:
        raise ValueError(f"--slurm-cpus-per-task {want}: no node of {where} has more than {cpus} CPUs (sinfo), so "
                         f"the task would wait forever; ask for at most {cpus}")
    mem = max(_number(n[2]) for n in mine)
    want_mem = _megabytes(parameters.get("mem"))
    if want_mem and mem and want_mem > mem:
        raise ValueError(f"--slurm-mem {parameters['mem']}: no node of {where} has more than {mem} MB of memory "
                         f"(sinfo), so the task would wait forever; ask for at most {mem}M")
    gpus = max(_gpus(n[3]) for n in mine)
    want_gpus = parameters.get("gpus_per_task")
    if want_gpus and want_gpus > gpus:
        raise ValueError(f"--slurm-gpus-per-task {want_gpus}: no node of {where} has more than {gpus} GPU(s) "
                         "(sinfo), so the task would wait forever" + (f"; ask for at most {gpus}" if gpus else
                                                                      "; pick a partition with GPUs"))


def _number(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def _megabytes(mem: str | None) -> float:
    if not mem:
        return 0.0
    match = re.fullmatch(r"(\d+)([KMGT]?)", mem.strip().upper())
    return int(match.group(1)) * _UNITS_MB[match.group(2) or "M"] if match else 0.0


def _gpus(gres: str) -> int:
    """GPUs of one node from sinfo's %G, e.g. "gpu:4", "gpu:a100:2(S:0-1)", "(null)"."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_time(value: str | int) -> int:
    """A SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes, rounded up.

    submitit needs minutes: it compares the elapsed time with the limit to tell a time-out from a preemption.
    """
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"--slurm-time {text!r} is not a SLURM time; use minutes (90), HH:MM:SS (1:30:00) or "
                         "D-HH:MM:SS (1-00:00:00)")
    days, first, second, third = match.groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        seconds += ((int(days) * 24 + hours) * 60 + minutes) * 60
    elif len(parts) == 3:  # HH:MM:SS
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    else:  # MM or MM:SS
        seconds = parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)
    if seconds <= 0:
        raise ValueError(f"--slurm-time {text!r} must be longer than zero")
    return -(-seconds // 60)


def check_mem(value: str) -> str:
    """A SLURM --mem value: a number with an optional K/M/G/T unit (megabytes without one)."""
    if not re.fullmatch(r"\d+[KMGT]?", value.strip(), flags=re.IGNORECASE):
        raise ValueError(f"--slurm-mem {value!r} is not a SLURM memory size; use e.g. 16G or 8000 (megabytes)")
    return value.strip().upper()


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError(MISSING_SUBMITIT) from None
    return submitit


@dataclass
class SlurmTask:
    """One array task: execute one planned job with a fixed torch thread count.

    The thread count is the submitting process's, so a task's CPU allocation does not change the numbers: CPU
    results of `--launcher slurm` equal the local launcher's (`--set threads=N` still overrides both).
    """

    planned: PlannedJob
    threads: int
    # Where checkpoint() leaves one line per requeue (`<job id>.requeued`): the waiting launcher reports a requeue
    # from it even when sacct's states never showed the task between its two runs.
    requeue_folder: str = ""

    def __call__(self) -> tuple[str, str, dict[str, Any] | None]:
        import torch
        from rich.console import Console

        from fairbench.registry import load_plugins
        from fairbench.runs.execute import execute

        console = Console(soft_wrap=True, highlight=False)  # a log file: whole lines, markup stripped
        load_plugins(self.planned.plugins)
        torch.set_num_threads(self.threads)
        slurm_id = _slurm_id()
        console.print(f"fairbench: {self.planned.label()} → {self.planned.run_dir} (SLURM job {slurm_id or '?'}, "
                      f"{self.threads} torch threads)", markup=False)
        epochs = self.planned.settings.epochs

        def on_epoch(record: dict[str, Any]) -> None:
            auc = record.get("val_auc")
            console.print(f"  epoch {record['epoch'] + 1}/{epochs}: loss {record.get('train', {}).get('loss', 0):.4g}"
                          f", val AUC {'n/a' if auc is None or auc != auc else f'{auc:.3f}'}", markup=False)

        result = execute(self.planned, log=console.print, on_epoch=on_epoch)
        console.print(f"fairbench: {result.status} {self.planned.label()}"
                      + (f": {result.message}" if result.message else ""), markup=False)
        return result.status, result.message, result.record

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on a time limit or preemption: requeue this same task. Nothing to save here, since
        `execute` writes the training state after every epoch and the requeued task resumes from it."""
        print(f"fairbench: {self.planned.label()} interrupted (time limit or preemption); asking submitit to "
              "requeue it, it resumes from its last saved epoch", flush=True)
        if self.requeue_folder and _slurm_id():
            try:
                with open(Path(self.requeue_folder) / f"{_slurm_id()}.requeued", "a") as fh:
                    fh.write(f"{time.time():.3f}\n")
            except OSError:  # the launcher then reports the requeue only if sacct shows it
                pass
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _slurm_id() -> str:
    """This task's SLURM id as submitit names it (`<array>_<task>`, or the job id), "" outside SLURM."""
    return "_".join(filter(None, (os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
                                  os.environ.get("SLURM_ARRAY_TASK_ID"))))


def _requeues(folder: Path, job_id: str) -> int:
    """How many times task `job_id` has asked to be requeued (lines its checkpoint() wrote)."""
    try:
        return len((folder / f"{job_id}.requeued").read_text().splitlines())
    except OSError:
        return 0


@register_launcher("slurm", description="one SLURM job array through submitit (--slurm-* options)")
class SlurmLauncher(Launcher):
    """Submit every job that is not done as one SLURM job array; wait for it and report each task (or not)."""

    panel = "SLURM (--launcher slurm)"
    options = (
        LauncherOption("--slurm-partition", "partition", str, help="Partition to submit to (default: the cluster's)."),
        LauncherOption("--slurm-time", "time", str, help="Time limit of each task: minutes or HH:MM:SS (default 60 "
                       "min); a task that reaches it requeues itself and resumes."),
        LauncherOption("--slurm-gpus-per-task", "gpus_per_task", int, help="GPUs for each task (one run)."),
        LauncherOption("--slurm-cpus-per-task", "cpus_per_task", int, help="CPUs for each task."),
        LauncherOption("--slurm-mem", "mem", str, help="Memory for each task, e.g. 32G."),
        LauncherOption("--slurm-account", "account", str, help="Account to charge."),
        LauncherOption("--slurm-qos", "qos", str, help="Quality of service."),
        LauncherOption("--slurm-array-parallelism", "array_parallelism", int,
                       help="At most this many tasks of the array at once."),
        LauncherOption("--no-wait", "wait", bool, False, parse=lambda no_wait: not no_wait,
                       help="Return once the array is submitted (watch with `fairbench status`); rerun the command "
                       "to repair runs."),
    )

    def __init__(self, *, partition: str | None = None, time: str | int | None = None,
                 gpus_per_task: int | None = None, cpus_per_task: int | None = None, mem: str | None = None,
                 account: str | None = None, qos: str | None = None, array_parallelism: int | None = None,
                 wait: bool = True, poll_s: float = 2.0, sync_s: float = 10.0) -> None:
        _submitit()
        if shutil.which("sbatch") is None or shutil.which("srun") is None:
            raise ValueError("--launcher slurm: sbatch/srun are not on PATH; run on a SLURM login node (to try "
                             "SLURM on this machine: sudo scripts/slurm_local.sh)")
        for flag, number in (("--slurm-gpus-per-task", gpus_per_task), ("--slurm-cpus-per-task", cpus_per_task),
                             ("--slurm-array-parallelism", array_parallelism)):
            if number is not None and number < (0 if flag == "--slurm-gpus-per-task" else 1):
                raise ValueError(f"{flag} {number} is out of range; use a positive number")
        parameters: dict[str, Any] = {"job_name": "fairbench",
                                      "time": parse_time(time) if time is not None else DEFAULT_TIME_MIN}
        optional = {"partition": partition, "gpus_per_task": gpus_per_task or None, "cpus_per_task": cpus_per_task,
                    "mem": check_mem(mem) if mem else None, "account": account, "qos": qos,
                    "array_parallelism": array_parallelism}
        parameters.update({k: v for k, v in optional.items() if v is not None})
        check_request(parameters)
        self.parameters = parameters
        self.wait = wait
        self.poll_s = poll_s
        self.sync_s = sync_s  # how often to ask sacct, which is how a cancelled or killed task is noticed

    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        import torch

        from fairbench.runs.execute import JobResult

        submitit = _submitit()
        results, todo = set_aside_finished(jobs, reporter)
        if not todo:
            return [results[i] for i in range(len(jobs))]
        folder = Path(jobs[0].out).absolute() / LOG_FOLDER
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**self.parameters)
        threads = torch.get_num_threads()
        try:
            with executor.batch():
                submitted = [executor.submit(SlurmTask(jobs[i], threads, str(folder))) for i in todo]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError, OSError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in lines if "error:" in line and "submission failed" not in line),
                          lines[-1] if lines else type(exc).__name__)
            raise ValueError(f"SLURM did not accept the job array ({reason}); check the --slurm-* options") from None
        array_id = submitted[0].job_id.split("_")[0]
        listing = folder / f"{array_id}_jobs.tsv"
        _write_listing(listing, [jobs[i] for i in todo], submitted)
        reporter.log(f"submitted {len(todo)} job(s) to SLURM as job {array_id} "
                     f"({len(jobs) - len(todo)} already done, not submitted); which task trains which run: "
                     f"{listing}")
        if not self.wait:
            out = jobs[0].out
            reporter.log(f"not waiting (--no-wait). Watch with: fairbench status --out {out} · squeue -j {array_id}"
                         f" · logs in {folder}/. Cancel with: scancel {array_id}. Rerun the same command to repair"
                         " runs that did not finish.")
            for i, job in zip(todo, submitted, strict=True):
                results[i] = JobResult(jobs[i], "submitted", f"SLURM job {job.job_id}")
            return [results[i] for i in range(len(jobs))]
        try:
            self._wait(jobs, dict(zip(todo, submitted, strict=True)), results, reporter, folder)
        except BaseException:  # Ctrl-C (or a signal) while waiting: the array itself is not touched
            reporter.log(f"stopped waiting; the SLURM jobs keep running: squeue -j {array_id}, "
                         f"scancel {array_id} to cancel them")
            raise
        return [results[i] for i in range(len(jobs))]

    def _wait(self, jobs: list[PlannedJob], pending: dict[int, Any], results: dict[int, JobResult],
              reporter: Reporter, folder: Path) -> None:
        seen: dict[str, str] = {}
        ran: set[str] = set()
        requeues_told: dict[str, int] = {}
        reasons: set[str] = set()
        last_sync = float("-inf")
        while pending:
            if time.monotonic() - last_sync >= self.sync_s:
                next(iter(pending.values())).watcher.update()  # one sacct call for the whole array
                _report_pending_reasons(reporter, next(iter(pending.values())).job_id.split("_")[0], reasons)
                last_sync = time.monotonic()
            for index, job in list(pending.items()):
                info = job.get_info(mode="cache")
                state = (info.get("State") or "PENDING").split()[0]
                before = seen.get(job.job_id)
                if state != before:
                    if _report_state(reporter, job.job_id, jobs[index], before, state, info.get("NodeList"),
                                     ran=job.job_id in ran):
                        requeues_told[job.job_id] = requeues_told.get(job.job_id, 0) + 1
                    seen[job.job_id] = state
                asked = _requeues(folder, job.job_id)
                if asked > requeues_told.get(job.job_id, 0):  # requeued between two looks at sacct
                    reporter.log(_requeued_line(job.job_id, jobs[index]))
                    requeues_told[job.job_id] = asked
                    if state == "RUNNING":
                        ran.add(job.job_id)
                if job.paths.result_pickle.exists() or state in _FINAL:
                    results[index] = _outcome(jobs[index], job, state)
                    reporter.job_finished(results[index])
                    del pending[index]
            if pending:
                time.sleep(self.poll_s)


def _report_pending_reasons(reporter: Reporter, array_id: str, reported: set[str]) -> None:
    """One line per new reason squeue gives for holding a task that is not ordinary queueing (e.g. PartitionConfig,
    ReqNodeNotAvail): such a task may never start."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", array_id, "-t", "PENDING", "-o", "%i|%r"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return
    for line in done.stdout.splitlines():
        task, _, reason = line.partition("|")
        reason = reason.strip()
        if reason and reason not in _QUEUEING and reason not in reported:
            reported.add(reason)
            reporter.log(f"[yellow]warning[/]: SLURM {task.strip()} pending: {reason} — the cluster may never run "
                         f"it as asked; cancel with scancel {array_id} and change the --slurm-* options")


def _report_state(reporter: Reporter, job_id: str, planned: PlannedJob, before: str | None, state: str,
                  node: str | None, *, ran: bool) -> bool:
    """A line when a task starts running, and when a running task goes back to the queue (requeued); True for the
    latter."""
    if state == "RUNNING":
        reporter.log(f"SLURM {job_id} running{' again' if ran else ''}{f' on {node}' if node else ''}: "
                     f"{planned.label()}")
    elif state in ("REQUEUED", "PREEMPTED") or (state == "PENDING" and before == "RUNNING"):
        reporter.log(_requeued_line(job_id, planned))
        return True
    return False


def _requeued_line(job_id: str, planned: PlannedJob) -> str:
    return (f"SLURM {job_id} requeued (time limit or preemption): {planned.label()}; it resumes from its last saved "
            "epoch when it runs again")


def _outcome(planned: PlannedJob, job, state: str) -> JobResult:
    """What one finished array task came to; a task that never returned names its SLURM state and its log."""
    from fairbench.runs.execute import JobResult

    where = f"SLURM job {job.job_id}, log {job.paths.stderr}"
    if not job.paths.result_pickle.exists():
        time.sleep(1)  # the pickle is written just before the task ends; give a shared filesystem a moment
    if not job.paths.result_pickle.exists():
        return JobResult(planned, "failed", f"{state.lower()} before it finished ({where}); rerun the same "
                                            "command to train it again")
    try:
        status, message, record = job.result()
    except _submitit().core.utils.UncompletedJobError as exc:  # the task raised; its traceback ends with the error
        lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("---")]
        error = next((line for line in reversed(lines) if not line.startswith(("You can check", "or at paths",
                                                                                "  - "))), "error")
        return JobResult(planned, "failed", f"{error.strip()} ({where})")
    return JobResult(planned, status, message, record)


def _write_listing(path: Path, planned: list[PlannedJob], submitted: list) -> None:
    """A table of SLURM task id → run, so `scancel`, `squeue` and a log can be matched to a run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["slurm_job", "run", "run_dir", "stdout", "stderr"])
        writer.writerows([job.job_id, p.label(), str(p.run_dir), str(job.paths.stdout), str(job.paths.stderr)]
                         for p, job in zip(planned, submitted, strict=True))

