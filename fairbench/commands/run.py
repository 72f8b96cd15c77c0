"""`fairbench run`: expand methods × archs × attributes × seeds into jobs and run each under the one trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from fairbench.commands.common import (
    ARCH_OPTION,
    ATTR_OPTION,
    DATA_OPTION,
    DATASET_OPTION,
    EPOCHS_OPTION,
    METHOD_OPTION,
    PLUGIN_OPTION,
    PRETRAINED_OPTION,
    PROTOCOL_OPTION,
    SEEDS_OPTION,
    SELECT_OPTION,
    SET_OPTION,
    STUDY_OPTION,
    TEXT_SOURCE_OPTION,
    exits_on_signal,
    fail,
    job_request,
    load_plugins_or_fail,
    plan_request,
    registered,
)


@exits_on_signal
def run(
    method: str = METHOD_OPTION,
    arch: str = ARCH_OPTION,
    attr: str = ATTR_OPTION,
    seeds: int = SEEDS_OPTION,
    data: str = DATA_OPTION,
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results root."),
    epochs: int = EPOCHS_OPTION,
    set_: list[str] = SET_OPTION,
    protocol: str = PROTOCOL_OPTION,
    select: str = SELECT_OPTION,
    pretrained: str = PRETRAINED_OPTION,
    text_source: str = TEXT_SOURCE_OPTION,
    plugin: list[str] = PLUGIN_OPTION,
    dataset: str = DATASET_OPTION,
    study: str = STUDY_OPTION,
    launcher: str = typer.Option("local", "--launcher", help="Where jobs run: " + registered("launchers")
                                 + ". Each launcher's own options follow."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List each job with its run folder and state "
                                 "(done / pending), and estimate the time left from finished runs; train nothing."),
    **launcher_options: Any,
) -> None:
    """Train and evaluate methods; one result folder per (dataset, method, arch, attribute, config, seed)."""
    import time

    from rich.console import Console

    from fairbench.commands.run_display import console_logging

    started = time.perf_counter()
    console = Console()
    if not console.is_terminal:
        console.soft_wrap = True  # a log file gets whole lines, never an 80-column wrap
    console_logging(console)
    load_plugins_or_fail(plugin)  # first: a study may name a plugin's method, arch or selection rule
    request = job_request(method=method, arch=arch, attr=attr, seeds=seeds, protocol=protocol, select=select,
                          dataset=dataset, set_=set_, study=study)
    chosen = _launcher(launcher, launcher_options)
    try:  # validates every --set and the data before any training starts
        planned = plan_request(request, out, data=data,
                               pretrained=None if pretrained.lower() == "none" else pretrained,
                               text_source=text_source, epochs=epochs, plugins=tuple(plugin or ()))
    except OSError as exc:  # the cache (default data, pretraining set) cannot be written
        fail(_os_error_line(exc, out))
    if dry_run:
        if study is not None:
            console.print(f"{request.source}: protocol {request.protocol}, select {request.selection_rule}",
                          markup=False, highlight=False, soft_wrap=True)
        _print_plan(console, planned)
        return
    _check_writable(out)
    try:
        _check_weights(console, planned)
    except OSError as exc:
        fail(_os_error_line(exc, out))
    _note_cpu_workers(console, chosen, planned)
    _run_all(console, chosen, planned, started)


def _os_error_line(exc: OSError, out: Path) -> str:
    """One line for a failed file operation before any job ran, naming the setting that picks the folder."""
    from fairbench.datasets.cache import cache_root
    from fairbench.files import describe_os_error

    where = Path(exc.filename or "").absolute()
    what = "--out" if where.is_relative_to(out.absolute()) else \
        "$FAIRBENCH_CACHE" if where.is_relative_to(cache_root().absolute()) else ""
    return describe_os_error(exc, what)


def _check_writable(out: Path) -> None:
    """The results folder takes files (a read-only, immutable or full folder fails here, before any job, with one
    line naming it); folders made for the check are removed again, so a later failure leaves no trace."""
    from fairbench.files import atomic_path

    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".fairbench-write-check") as tmp:
            tmp.write_bytes(b"ok")
        (out / ".fairbench-write-check").unlink()
        for folder in made:
            folder.rmdir()
    except FileExistsError:
        fail(f"--out {out}: exists and is not a folder; choose another --out")
    except OSError as exc:
        from fairbench.files import naming

        fail(_os_error_line(naming(exc, out) if exc.filename and Path(exc.filename).parent == out else exc, out))


def launcher_options() -> list[tuple[str, type, Any]]:
    """Every registered launcher's options as `run` options: (name, type, typer option), read when the CLI is
    built (fairbench.commands.common.LiveCommand)."""
    from fairbench.registry import LAUNCHERS

    out = []
    for cls in LAUNCHERS.values():
        for opt in cls.options:
            decls = [opt.flag] + ([opt.short] if opt.short else [])
            out.append((opt.param, opt.type, typer.Option(opt.default, *decls, help=opt.help,
                                                          rich_help_panel=cls.panel)))
    return out


EXTRA_OPTIONS = launcher_options  # picked up by fairbench.cli


def _launcher(name: str, values: dict[str, Any]):
    """The chosen launcher, built from its own options; another launcher's option given is one line."""
    from fairbench.registry import LAUNCHERS, UnknownNameError

    try:
        chosen = LAUNCHERS.get(name)
    except UnknownNameError as exc:
        fail(str(exc))
    foreign: dict[str, list[str]] = {}
    kwargs = {}
    for cls in LAUNCHERS.values():
        for opt in cls.options:
            value = values.get(opt.param, opt.default)
            if value == opt.default:
                continue
            if cls is chosen:
                kwargs[opt.field] = opt.value(value)
            else:
                foreign.setdefault(cls.name, []).append(opt.flag)
    for owner, flags in foreign.items():
        fail(f"{', '.join(flags)} need --launcher {owner}")
    try:
        return chosen(**kwargs)
    except ValueError as exc:
        fail(str(exc))


def _check_weights(console, planned) -> None:
    """Every pending job's weights must be at hand before any run folder is made; warn about slow CPU runs."""
    from fairbench.models.backbones import WeightsUnavailableError, cpu_estimate, ensure_weights

    pending = [p for p in planned if p.state() != "done"]
    for arch, pretrained in dict.fromkeys((p.job.arch, p.config["pretrained"]) for p in pending):
        try:
            ensure_weights(arch, pretrained)
        except WeightsUnavailableError as exc:
            fail(str(exc))
    from fairbench.training.pretrain import ensure_pretrained

    for target in {p.pretraining.key: p.pretraining for p in pending if p.pretraining is not None}.values():
        ensure_pretrained(target, pending[0].cache_dir)  # once, before any run folder; announced as a phase
    import torch

    if torch.cuda.is_available():
        return
    for arch in dict.fromkeys(p.job.arch for p in pending):
        jobs = [p for p in pending if p.job.arch == arch]
        estimate = cpu_estimate(arch, jobs)
        if estimate:
            console.print(f"[yellow]warning[/]: {estimate}")


def _note_cpu_workers(console, launcher, planned) -> None:
    """Worker processes on a CPU each use a sequential run's thread count (CPU results depend on it): say so once."""
    import os

    import torch

    slots = getattr(launcher, "slots", [])
    pending = [p for p in planned if p.state() != "done"]
    workers = min(len(slots), len(pending))
    if workers < 2 or torch.cuda.is_available() or any(s.gpu is not None for s in slots):
        return
    if all(p.settings.threads for p in pending):  # the config fixes the thread count already
        return
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        console.print(f"note: {workers} workers × {threads} torch threads on {cores} CPU cores: each worker uses a "
                      "sequential run's thread count, so the numbers equal a sequential run's; for speed pass "
                      "--set threads=1 (part of the config, so those are new runs)", highlight=False)


def _print_plan(console, planned) -> None:
    from collections import Counter

    from fairbench.estimate import estimate_remaining
    from fairbench.method import flat_settings
    from fairbench.runs.results import collect_results

    states = [p.state() for p in planned]
    counts = Counter(states)
    console.print(f"{len(planned)} job(s) (dry run): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    pending = [p for p, state in zip(planned, states, strict=True) if state != "done"]
    if planned:
        records = collect_results(planned[0].out).records
        for line in estimate_remaining(pending, records).lines(len(pending)):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    for p, state in zip(planned, states, strict=True):
        settings = p.settings
        ms = ", ".join(f"{k}={v}" for k, v in flat_settings(p.method_instance().settings).items()) or "-"
        console.print(f"{state:8} {p.label()}  {p.run_dir}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"         method: {ms}; trainer: epochs={settings.epochs} batch={settings.batch_size} "
                      f"{settings.optimizer} lr={settings.lr:g} select={settings.select}",
                      markup=False, highlight=False, soft_wrap=True)


def _run_all(console, launcher, planned, started: float) -> None:
    from fairbench.commands.run_display import ConsoleReporter, elapsed
    from fairbench.datasets import DatasetError
    from fairbench.models import WeightsUnavailableError

    out = planned[0].out if planned else None
    with ConsoleReporter(console) as reporter:
        try:
            results = launcher.launch(planned, reporter)
        except (DatasetError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
            reporter.close()
            fail(f"{reporter.current or 'run'}: {exc}")
        except OSError as exc:
            reporter.close()
            fail(_os_error_line(exc, out))
    if any(r.record and r.record["dataset"]["synthetic"] for r in results):
        console.print("[bold yellow]These results are on SYNTHETIC data, not the real dataset.[/]")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "submitted")}
    if counts["submitted"]:
        console.print(f"Submitted {counts['submitted']} job(s) in {elapsed(started)}; {counts['skipped']} skipped "
                      f"(already done). Results will appear under {out}/.")
        return
    elsewhere = sum(getattr(r, "holder", None) is not None for r in results)
    busy = f", {elsewhere} running elsewhere" if elsewhere else ""
    watch = f" (progress: `fairbench status --out {out}`)" if elsewhere else ""
    console.print(f"Finished in {elapsed(started)}: {counts['done']} trained, {counts['skipped'] - elsewhere} "
                  f"skipped (already done){busy}, {counts['failed']} failed. Results under {out}/ — show them "
                  f"with `fairbench table --out {out}`{watch}.")
    if counts["failed"]:
        failed = [r for r in results if r.status == "failed"]
        console.print(f"[red]{len(failed)} run(s) failed[/] (why: failure.json in each folder, `fairbench status "
                      f"--out {out}`); the same command retries them:", highlight=False)
        for r in failed[:10]:
            console.print(f"  {r.planned.label()}: {r.message}", markup=False, highlight=False, soft_wrap=True)
        if len(failed) > 10:
            console.print(f"  … and {len(failed) - 10} more", highlight=False)
        raise typer.Exit(1)
