"""What `fairbench run` shows: labelled progress bars in a terminal, one plain line per event in a log file."""

from __future__ import annotations

import logging
import time
from typing import Any

from fairbench.training.probe import format_shares

_PHASE_HANDLER = "fairbench-console"


def elapsed(since: float) -> str:
    seconds = time.perf_counter() - since
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


class _ConsoleHandler(logging.Handler):
    def __init__(self, console) -> None:
        super().__init__(logging.INFO)
        self.name = _PHASE_HANDLER
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        self.console.print(f"[{style}]{record.getMessage()}[/]", highlight=False)


def console_logging(console) -> None:
    """Route the `fairbench` logger's phase lines (data generation, cache builds, warnings) to `console`."""
    logger = logging.getLogger("fairbench")
    logger.handlers = [h for h in logger.handlers if h.name != _PHASE_HANDLER] + [_ConsoleHandler(console)]
    logger.setLevel(logging.INFO)
    # The console shows these lines; a root handler would print each again as "INFO:fairbench:…" on stderr, and one
    # appears uninvited: open_clip's module-level `logging.info` calls `logging.basicConfig()`.
    logger.propagate = False


class ConsoleReporter:
    """A `fairbench.launchers.Reporter` for the console.

    In a terminal: a labelled bar of jobs and one bar of steps per running job (several when worker processes
    run jobs side by side). Without one (a log file, CI, SLURM): a line when each job starts, one per epoch
    with its losses and validation AUC, and one when it ends.
    """

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.plain = not console.is_terminal
        self.current: str | None = None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, disable=self.plain, transient=True)
        self.all_task = None
        self.step_tasks: dict[str, Any] = {}  # run folder → its bar, one per running job
        self.started: dict[str, float] = {}

    def __enter__(self) -> ConsoleReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.console.print(message)

    def job_started(self, planned, index: int, total: int) -> None:
        self.current = planned.label()
        self.started[self.current] = time.perf_counter()
        if self.plain:
            self.console.print(f"[{index}/{total}] training {planned.label()} → {planned.run_dir}", highlight=False)
            return
        if self.all_task is None:
            self.all_task = self.progress.add_task(f"jobs (of {total})", total=total)
        self.step_tasks[str(planned.run_dir)] = self.progress.add_task(f"  training {planned.label()}: steps",
                                                                       total=None)

    def step(self, planned, done: int, total: int) -> None:
        task = self.step_tasks.get(str(planned.run_dir))
        if task is not None:
            self.progress.update(task, completed=done, total=total)

    def epoch_finished(self, planned, record: dict[str, Any]) -> None:
        if not self.plain:
            return
        train = record.get("train", {})
        terms = ", ".join(f"{k} {v:.4g}" for k, v in train.items() if k != "loss")
        auc = record.get("val_auc")
        auc_text = "n/a" if auc is None or auc != auc else f"{auc:.3f}"
        loss = train.get("loss", float("nan"))
        epochs = planned.settings.epochs
        shares = format_shares(record)
        self.console.print(f"  {planned.label()} epoch {record['epoch'] + 1}/{epochs}: loss {loss:.4g} ({terms}), "
                           f"val AUC {auc_text}, {record.get('train_seconds', 0):.0f} s"
                           + (f"; {shares}" if shares else ""), highlight=False)

    def job_finished(self, result) -> None:
        task = self.step_tasks.pop(str(result.planned.run_dir), None)
        if task is not None:
            self.progress.remove_task(task)
        if self.all_task is not None:
            self.progress.advance(self.all_task)
        label = result.planned.label()
        if result.status == "failed":
            self.console.print(f"[red]failed[/] {label}: {result.message}")
        elif result.status == "skipped":
            self.console.print(f"[dim]skipped[/] {label}: {result.message} ({result.path})")
        else:
            self.console.print(summary_line(result.planned, result.record))
            for warning in seed_outlier_warnings(result.planned, result.record):
                self.console.print(f"[yellow]warning[/]: {warning}")


def summary_line(planned, rec: dict[str, Any]) -> str:
    test = rec["metrics"]["test"]
    attr = planned.job.attribute or next(iter(test["attributes"]), None)
    a = test["attributes"].get(attr, {}) if attr else {}
    fmt = lambda v: "nan" if v is None else f"{100 * v:.1f}"  # noqa: E731
    tag = " [yellow]SYNTHETIC[/]" if rec["dataset"]["synthetic"] else ""
    sel = rec["selection"]
    fair = f", {attr} ES-AUC {fmt(a.get('es_auc'))}, DPD {fmt(a.get('dpd'))}, EOD {fmt(a.get('eod'))}" if a else ""
    when = f"epoch {sel['epoch']}, {sel['label']}" if sel.get("epoch") is not None else rec.get("mode", "no epochs")
    seconds = rec["timings"]["total_s"]
    return f"[green]done[/] {planned.label()}: AUC {fmt(test['auc'])}{fair} ({when}; {seconds:.0f}s){tag}"


# A seed whose selected validation AUC is this far (absolute) below the median of its finished sibling seeds
# (same method, arch, attribute and config) is called out: one collapsed seed dominates a mean ± std row.
SEED_OUTLIER_AUC_GAP = 0.10


def seed_outlier_warnings(planned, rec: dict[str, Any]) -> list[str]:
    """Warn when this run's validation AUC is far below the other finished seeds of the same configuration."""
    import statistics

    from fairbench.runs.results import CorruptResultError, load_result

    mine = rec["metrics"]["val"]["auc"]
    others = []
    for path in sorted(planned.run_dir.parent.glob("seed*/result.json")):
        if path.parent == planned.run_dir:
            continue
        try:
            auc = load_result(path)["metrics"]["val"]["auc"]
        except (CorruptResultError, KeyError):
            continue
        if auc is not None:
            others.append((path.parent.name, auc))
    if mine is None or not others:
        return []
    median = statistics.median(a for _, a in others)
    if median - mine <= SEED_OUTLIER_AUC_GAP:
        return []
    listed = ", ".join(f"{name} {auc:.3f}" for name, auc in others)
    return [f"{planned.label()}: validation AUC {mine:.3f} is {median - mine:.3f} below the median of the other "
            f"seeds ({listed}); this seed may have collapsed and will dominate the row's std"]
