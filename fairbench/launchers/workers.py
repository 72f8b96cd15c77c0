"""The local launcher's worker pool: worker processes (one per GPU slot, or N on the CPU) pull jobs from this one.

The parent hands out one pending job at a time to whichever worker asks, so a worker that finishes early takes
the next job, and a job is re-checked (finished by another `fairbench run` meanwhile?) just before it goes out.
Workers send events back over one queue; the parent turns them into calls on the one `Reporter`, so a single
display shows every worker. Workers are started with `spawn`: a fresh interpreter whose CUDA_VISIBLE_DEVICES
is set before torch is imported. A job that raises, or a worker that dies, fails that job only; the others go on.

This module imports nothing heavy at module level: a spawned worker imports it first, before its GPU is chosen.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fairbench.launchers.base import Reporter, error_line, failure_line, set_aside_finished

if TYPE_CHECKING:
    from fairbench.runs.execute import JobResult
    from fairbench.runs.jobs import PlannedJob

# A worker sends at most this many step events per second per job; the display needs no more.
STEP_EVENT_INTERVAL_S = 0.25
# How often the parent looks at its workers' health while no event arrives.
POLL_S = 0.2


@dataclass(frozen=True)
class WorkerSlot:
    """Where one worker runs: its number, the GPU it sees (None: whatever torch picks) and a label for messages."""

    index: int
    gpu: str | None = None

    @property
    def label(self) -> str:
        return f"worker {self.index}" + (f" (GPU {self.gpu})" if self.gpu is not None else "")


def worker_slots(workers: int = 1, gpus: list[str] | None = None, runs_per_gpu: int = 1) -> list[WorkerSlot]:
    """One slot per worker process; with GPUs, `runs_per_gpu` per GPU, interleaved (0,1,0,1) so the first jobs
    spread over the GPUs. Raises ValueError (a one-line message) on a bad combination."""
    if runs_per_gpu < 1:
        raise ValueError(f"--runs-per-gpu must be at least 1, got {runs_per_gpu}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if gpus:
        if workers != 1:
            raise ValueError("give --gpus (one worker per listed GPU, times --runs-per-gpu) or --workers, not both")
        bad = [g for g in gpus if not g.isdigit()]
        if bad:
            raise ValueError(f"--gpus {','.join(gpus)}: {', '.join(bad)} is not a GPU index; use e.g. --gpus 0,1")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"--gpus {','.join(gpus)} lists a GPU twice; use --runs-per-gpu for several runs per GPU")
        order = [g for _ in range(runs_per_gpu) for g in gpus]
        return [WorkerSlot(i, g) for i, g in enumerate(order, start=1)]
    if runs_per_gpu != 1:
        raise ValueError("--runs-per-gpu needs --gpus (e.g. --gpus 0,1 --runs-per-gpu 2)")
    return [WorkerSlot(i) for i in range(1, workers + 1)]


class WorkerPool:
    """Jobs in worker processes, one job per worker at a time (the local launcher with --workers/--gpus); see the
    module docstring."""

    def __init__(self, slots: list[WorkerSlot], threads: int | None = None) -> None:
        self.slots = slots
        self.threads = threads  # torch CPU threads per worker; None: this process's count (as a sequential run)

    def launch(self, jobs: list[PlannedJob], reporter: Reporter) -> list[JobResult]:
        results, pending = set_aside_finished(jobs, reporter)
        if pending:
            _Pool(self, jobs, pending, results, reporter).run()
        return [results[i] for i in range(len(jobs))]

    def cpu_threads(self) -> int:
        if self.threads:
            return self.threads
        import torch

        return torch.get_num_threads()


class _Pool:
    """The parent's side of one launch: start workers, hand out jobs, relay events, account for every job."""

    def __init__(self, launcher: WorkerPool, jobs: list[PlannedJob], pending: list[int],
                 results: dict[int, JobResult], reporter: Reporter) -> None:
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.jobs, self.pending, self.results, self.reporter = jobs, list(pending), results, reporter
        self.threads = launcher.cpu_threads()
        self.slots = launcher.slots[:len(pending)]  # never more workers than jobs
        self.events = self.ctx.Queue()
        self.inbox: dict[int, Any] = {}
        self.procs: dict[int, Any] = {}
        self.holding: dict[int, int | None] = {}  # worker → index of the job it was handed (None: idle)
        self.retired: set[int] = set()  # workers told to stop or found dead

    def run(self) -> None:
        try:
            for slot in self.slots:
                self._start(slot)
            checked = time.monotonic()
            while len(self.retired) < len(self.procs):
                try:
                    self._handle(self.events.get(timeout=POLL_S))
                except queue.Empty:
                    pass
                if time.monotonic() - checked >= POLL_S:  # also while busy workers keep the queue full
                    self._check_health()
                    checked = time.monotonic()
        except BaseException as exc:  # Ctrl-C, SIGTERM turned into an exception, a reporter error: stop workers now
            from fairbench.runs.interrupt import Interrupted

            if isinstance(exc, Interrupted):  # the message names the runs the workers were training
                held = sorted(i for i in self.holding.values() if i is not None)
                exc.elsewhere = [self.jobs[i].label() for i in held]
            self._stop_all(wait_s=0)
            raise
        self._stop_all(wait_s=10)
        for i in self.pending:  # only left when every worker is gone (they died faster than the jobs went out)
            self._fail(i, "not run: no worker was left to take it (see the failures above)")

    # -------------------------------------------------------------- workers

    def _start(self, slot: WorkerSlot) -> None:
        inbox = self.ctx.Queue()
        proc = self.ctx.Process(target=worker_main, name=f"fairbench-{slot.label}",
                                args=(slot, self.threads, inbox, self.events))
        # The child inherits this environment at exec, before any Python runs in it; worker_main sets it again.
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        if slot.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu
        try:
            proc.start()
        finally:
            if slot.gpu is not None:
                _restore_env("CUDA_VISIBLE_DEVICES", saved)
        self.inbox[slot.index], self.procs[slot.index], self.holding[slot.index] = inbox, proc, None
        self.retired.discard(slot.index)

    def _check_health(self) -> None:
        """A worker that exited without saying goodbye fails the job it held; a replacement takes its place."""
        for wid, proc in list(self.procs.items()):
            if wid in self.retired or proc.is_alive():
                continue
            self._drain()  # its last events (e.g. a job's failure message) may still be in the queue
            if wid in self.retired:
                continue
            self.retired.add(wid)
            held = self.holding.get(wid)
            slot = next(s for s in self.slots if s.index == wid)
            why = f"{slot.label} exited with code {proc.exitcode}"
            if held is not None:
                self.holding[wid] = None
                self._fail(held, f"{why} while running it (killed, out of memory, or a crash in native code)")
                if self.pending:
                    self.reporter.log(f"[yellow]warning[/]: {why}; starting a new worker in its place")
                    self._start(slot)
            else:
                self.reporter.log(f"[red]error[/]: {why} before taking a job")

    def _drain(self, limit_s: float = 1.0) -> None:
        """Handle what is queued (up to `limit_s`: other busy workers may keep sending)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            try:
                self._handle(self.events.get(timeout=0.05))
            except queue.Empty:
                return

    def _stop_all(self, wait_s: float) -> None:
        """Ask idle workers to leave; after `wait_s`, SIGTERM the rest (a busy worker stops its job cleanly)."""
        for wid, inbox in self.inbox.items():
            if self.procs[wid].is_alive():
                inbox.put(None)
        deadline = time.monotonic() + wait_s
        for proc in self.procs.values():
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        for q in [self.events, *self.inbox.values()]:
            q.close()
            q.cancel_join_thread()

    # -------------------------------------------------------------- events

    def _handle(self, event: tuple) -> None:
        kind, wid, *rest = event
        if kind == "ready":
            self._hand_out(wid)
        elif kind == "log":
            self.reporter.log(rest[0])
        elif kind == "step":
            index, done, total = rest
            self.reporter.step(self.jobs[index], done, total)
        elif kind == "epoch":
            index, record = rest
            self.reporter.epoch_finished(self.jobs[index], record)
        elif kind == "finished":
            index, status, message, record = rest
            self.holding[wid] = None
            self._finish(index, status, message, record)
        elif kind == "bye":
            self.retired.add(wid)

    def _hand_out(self, wid: int) -> None:
        from fairbench.runs.execute import JobResult

        while self.pending:
            index = self.pending.pop(0)
            planned = self.jobs[index]
            if planned.state() == "done":  # another process finished it since this run was planned
                self._record(index, JobResult(planned, "skipped", "finished run with this config exists"))
                continue
            self.holding[wid] = index
            self.reporter.job_started(planned, index + 1, len(self.jobs))
            self.inbox[wid].put((index, planned))
            return
        self.inbox[wid].put(None)

    def _finish(self, index: int, status: str, message: str, record: dict | None) -> None:
        from fairbench.runs.execute import JobResult

        self._record(index, JobResult(self.jobs[index], status, message, record))

    def _fail(self, index: int, message: str) -> None:
        self._finish(index, "failed", message, None)

    def _record(self, index: int, result: JobResult) -> None:
        self.results[index] = result
        self.reporter.job_finished(result)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# ------------------------------------------------------------------ the worker process


def worker_main(slot: WorkerSlot, threads: int, inbox, events) -> None:
    """Entry point of a spawned worker: choose the GPU, pin the thread count, then execute jobs until told to stop."""
    import signal

    if slot.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu  # before torch is imported below
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    import torch

    # The same thread count as the parent (what a sequential run uses): CPU results depend on it.
    torch.set_num_threads(threads)
    _forward_logging(slot, events)
    from fairbench.runs.execute import DataCache

    cache = DataCache()
    loaded: set[tuple[str, ...]] = set()
    parent = _parent_watch()
    while True:
        events.put(("ready", slot.index))
        task = _next_task(inbox, parent)
        if task is None:
            if parent():
                events.put(("bye", slot.index))
            else:
                events.cancel_join_thread()
            return
        index, planned = task
        status, message, record = _run_one(slot, index, planned, cache, events, parent, loaded)
        events.put(("finished", slot.index, index, status, message, record))


def _run_one(slot: WorkerSlot, index: int, planned: PlannedJob, cache, events, parent,
             loaded: set[tuple[str, ...]]) -> tuple[str, str, Any]:
    """Execute one job; any exception becomes this job's failure line (type, message, where it was raised)."""
    from fairbench.registry import load_plugins
    from fairbench.runs.execute import execute

    last_step = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last_step[0] >= STEP_EVENT_INTERVAL_S:
            last_step[0] = now
            if not parent():
                events.cancel_join_thread()  # nobody reads the queue any more: exit without flushing it
                raise SystemExit(f"{slot.label}: the launching process is gone; stopping")
            events.put(("step", slot.index, index, done, total))

    try:
        if planned.plugins not in loaded:  # the methods the parent knew, so the job's method can be rebuilt here
            load_plugins(list(planned.plugins))
            loaded.add(planned.plugins)
        result = execute(planned, data_cache=cache, log=lambda m: events.put(("log", slot.index, m)),
                         progress=progress, on_epoch=lambda r: events.put(("epoch", slot.index, index, r)))
    except Exception as exc:  # reported to the parent as this job's failure, never lost
        return "failed", f"{failure_line(exc)} [{slot.label}]", None
    return result.status, result.message, result.record


__all__ = ["WorkerPool", "WorkerSlot", "error_line", "worker_main", "worker_slots"]


def _next_task(inbox, parent):
    while True:
        try:
            return inbox.get(timeout=1.0)
        except queue.Empty:
            if not parent():
                return None


def _parent_watch():
    """A cheap check that the launching process still lives (a killed parent must not leave workers training)."""
    import multiprocessing

    proc = multiprocessing.parent_process()
    return proc.is_alive if proc is not None else (lambda: True)


def _forward_logging(slot: WorkerSlot, events) -> None:
    """The `fairbench` logger's phase lines (cache builds, data generation) go to the parent's display."""
    import logging

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            style = "yellow" if record.levelno >= logging.WARNING else "dim"
            events.put(("log", slot.index, f"[{style}]{record.getMessage()}[/]"))

    logger = logging.getLogger("fairbench")
    logger.handlers = [Forward(logging.INFO)]
    logger.setLevel(logging.INFO)
    logger.propagate = False

