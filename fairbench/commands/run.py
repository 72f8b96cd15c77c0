"""`fairbench run`: expand methods × archs × attributes × seeds into jobs and run each under the one trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import PLUGIN_HELP, exits_on_signal, fail, load_methods, split_list


@exits_on_signal
def run(
    method: str = typer.Option(..., "--method", "-m", help="Method name(s): comma list and wildcards, e.g. "
                               "'clip,fairclip' or 'fairmoe*'. See `fairbench methods`."),
    arch: str = typer.Option("tiny", "--arch", help="tiny (CPU demo, random init), b16, l14, or an open_clip "
                             "model name; comma list allowed."),
    attr: str = typer.Option(None, "--attr", "-a", help="Training attribute(s) for methods that use one, comma list "
                             "(`fairbench data list` shows each dataset's). Default: all of the dataset's."),
    seeds: int = typer.Option(3, "--seeds", "-s", min=1, help="Run seeds 0..S-1."),
    data: str = typer.Option(None, "--data", help="Dataset folder. Default: the dataset's environment variable "
                             "(FAIRBENCH_DATA for fairvlmed), else its built-in SYNTHETIC stand-in (generated once)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results root."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the arch's default epoch count."),
    set_: list[str] = typer.Option(None, "--set", help="Method or trainer setting, key=value (repeatable); "
                                   "prefix 'method.' or 'train.' to disambiguate."),
    select: str = typer.Option(None, "--select", help="Model selection: 'val' (default, best validation AUC) or "
                               "'test' (the papers' best-test-epoch rule; optimistic, labelled in every output)."),
    pretrained: str = typer.Option("default", "--pretrained", help="'default' (the arch's usual weights: openai "
                                   "for b16/l14, none for tiny), an open_clip tag, a local checkpoint, or 'none'."),
    text_source: str = typer.Option(None, "--text-source", help="Training text, one of the dataset's text sources "
                                    "(default: its first; `fairbench data list` shows them)."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    dataset: str = typer.Option("fairvlmed", "--dataset", help="Registered dataset (see `fairbench data list`)."),
    launcher: str = typer.Option("local", "--launcher", help="Where jobs run: local (this process, one after "
                                 "another)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List each job with its run folder and state "
                                 "(done / pending); train nothing."),
) -> None:
    """Train and evaluate methods; one result folder per (dataset, method, arch, attribute, config, seed)."""
    import time

    from rich.console import Console

    from fairbench.commands.run_display import console_logging
    from fairbench.datasets import DatasetError
    from fairbench.method import SettingsError
    from fairbench.registry import UnknownNameError, expand_methods, get_dataset

    started = time.perf_counter()
    console = Console()
    if not console.is_terminal:
        console.soft_wrap = True  # a log file gets whole lines, never an 80-column wrap
    console_logging(console)
    load_methods(plugin)
    try:
        methods = expand_methods(method)
        spec = get_dataset(dataset)
    except UnknownNameError as exc:
        fail(str(exc))
    attrs = split_list(attr)
    for a in attrs or []:
        if a not in spec.attributes:
            fail(f"unknown attribute {a!r} in --attr; dataset {spec.name!r} has {', '.join(spec.attributes)}")
    if select not in (None, "val", "test"):
        fail(f"--select must be 'val' or 'test', got {select!r}")
    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r} is not key=value (e.g. --set fair_lambda=1e-5)")
        overrides[key.strip()] = value.strip()
    archs = split_list(arch) or ["tiny"]
    _check_archs(archs)

    from fairbench.jobs import RunOptions, expand_jobs, plan
    from fairbench.launchers import get_launcher

    try:
        chosen = get_launcher(launcher)
    except ValueError as exc:
        fail(str(exc))
    options = RunOptions(out=out, dataset=spec.name, data=data,
                         pretrained=None if pretrained.lower() == "none" else pretrained,
                         text_source=text_source, epochs=epochs, select=select, overrides=overrides,
                         plugins=tuple(plugin or ()))
    try:  # validates every --set and the data before any training starts
        planned = plan(options, expand_jobs(methods, archs, attrs, list(range(seeds)), dataset=spec.name))
    except (SettingsError, DatasetError) as exc:
        fail(str(exc))
    if dry_run:
        _print_plan(console, planned)
        return
    _check_weights(console, planned)
    _run_all(console, chosen, planned, started)


def _check_archs(archs: list[str]) -> None:
    from fairbench.models.backbones import input_spec

    for a in archs:
        try:
            input_spec(a)
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
    import torch

    if torch.cuda.is_available():
        return
    for arch in dict.fromkeys(p.job.arch for p in pending):
        jobs = [p for p in pending if p.job.arch == arch]
        estimate = cpu_estimate(arch, jobs)
        if estimate:
            console.print(f"[yellow]warning[/]: {estimate}")


def _print_plan(console, planned) -> None:
    from collections import Counter

    states = [p.state() for p in planned]
    counts = Counter(states)
    console.print(f"{len(planned)} job(s) (dry run): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for p, state in zip(planned, states, strict=True):
        settings = p.train_settings()
        ms = ", ".join(f"{k}={v}" for k, v in p.config["method_settings"].items()) or "-"
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
    if any(r.record and r.record["dataset"]["synthetic"] for r in results):
        console.print("[bold yellow]These results are on SYNTHETIC data, not the real dataset.[/]")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    elsewhere = sum(r.holder is not None for r in results)
    busy = f", {elsewhere} running elsewhere" if elsewhere else ""
    watch = f" (progress: `fairbench status --out {out}`)" if elsewhere else ""
    console.print(f"Finished in {elapsed(started)}: {counts['done']} trained, {counts['skipped'] - elsewhere} "
                  f"skipped (already done){busy}, {counts['failed']} failed. Results under {out}/ — show them "
                  f"with `fairbench table --out {out}`{watch}.")
    if counts["failed"]:
        raise typer.Exit(1)
