"""`fairbench run`: expand methods × archs × attributes × seeds into jobs and run each under the one trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import PLUGIN_HELP, fail, load_methods, split_list


def run(
    method: str = typer.Option(..., "--method", "-m", help="Method name(s): comma list and wildcards, e.g. "
                               "'clip,fairclip' or 'fairmoe*'. See `fairbench methods`."),
    arch: str = typer.Option("tiny", "--arch", "-a", help="tiny (CPU demo, random init), b16, l14, or an open_clip "
                             "model name; comma list allowed."),
    attr: str = typer.Option(None, "--attr", help="Training attribute(s) for methods that use one: race, gender, "
                             "ethnicity, language (comma list). Default: all four."),
    seeds: int = typer.Option(3, "--seeds", "-s", min=1, help="Run seeds 0..S-1."),
    data: str = typer.Option(None, "--data", help="FairVLMed folder. Default: $FAIRBENCH_DATA, else the built-in "
                             "SYNTHETIC FairVLMed (generated once and cached)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results root."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the arch's default epoch count."),
    set_: list[str] = typer.Option(None, "--set", help="Method or trainer setting, key=value (repeatable); "
                                   "prefix 'method.' or 'train.' to disambiguate."),
    select: str = typer.Option(None, "--select", help="Model selection: 'val' (default, best validation AUC) or "
                               "'test' (the papers' best-test-epoch rule; optimistic, labelled in every output)."),
    pretrained: str = typer.Option("default", "--pretrained", help="'default' (the arch's usual weights: openai "
                                   "for b16/l14, none for tiny), an open_clip tag, a local checkpoint, or 'none'."),
    text_source: str = typer.Option("gpt4", "--text-source", help="Training text: gpt4 (GPT-4 summary), note, "
                                    "note+demographics."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs and their settings; train nothing."),
) -> None:
    """Train and evaluate methods; one result folder per (dataset, method, arch, attribute, config, seed)."""
    from rich.console import Console

    from fairbench import ATTRIBUTES
    from fairbench.method import SettingsError
    from fairbench.registry import UnknownMethodError, expand_methods

    console = Console()
    load_methods(plugin)
    try:
        methods = expand_methods(method)
    except UnknownMethodError as exc:
        fail(str(exc))
    attrs = split_list(attr)
    for a in attrs or []:
        if a not in ATTRIBUTES:
            fail(f"unknown attribute {a!r} in --attr; use one or more of {', '.join(ATTRIBUTES)}")
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

    from fairbench.runner import Runner, RunOptions, expand_jobs

    options = RunOptions(out=out, data=data, pretrained=None if pretrained.lower() == "none" else pretrained,
                         text_source=text_source, epochs=epochs, select=select, overrides=overrides)
    jobs = expand_jobs(methods, archs, attrs, list(range(seeds)))
    try:
        runner = Runner(options, methods, log=console.print)
        plans = [runner.plan(job) for job in jobs]  # validates every --set before any training starts
    except SettingsError as exc:
        fail(str(exc))
    if dry_run:
        _print_plan(console, jobs, plans)
        return
    _run_all(console, runner, jobs)


def _check_archs(archs: list[str]) -> None:
    from fairbench.models.backbones import input_spec

    for a in archs:
        try:
            input_spec(a)
        except ValueError as exc:
            fail(str(exc))


def _print_plan(console, jobs, plans) -> None:
    from rich.table import Table

    from fairbench.method import flat_settings

    table = Table(title=f"{len(jobs)} job(s) (dry run)")
    for col in ("method", "arch", "attribute", "seed", "method settings", "trainer"):
        table.add_column(col)
    for job, (_, method, settings) in zip(jobs, plans, strict=True):
        ms = ", ".join(f"{k}={v}" for k, v in flat_settings(method.settings).items()) or "-"
        tr = f"epochs={settings.epochs} batch={settings.batch_size} {settings.optimizer} lr={settings.lr:g} " \
             f"select={settings.select}"
        table.add_row(job.method, job.arch, job.attribute or "-", str(job.seed), ms, tr)
    console.print(table)


def _run_all(console, runner, jobs) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fairbench.data import DatasetError
    from fairbench.models import WeightsUnavailableError

    failed = 0
    synthetic = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not console.is_terminal, transient=True) as progress:
        all_task = progress.add_task("runs", total=len(jobs))
        for job in jobs:
            step_task = progress.add_task(f"  {job.label()}", total=None)

            def on_step(done: int, total: int, _task=step_task) -> None:
                progress.update(_task, completed=done, total=total)

            try:
                result = runner.run(job, progress=on_step)
            except (DatasetError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
                progress.stop()
                fail(f"{job.label()}: {exc}")
            progress.remove_task(step_task)
            progress.advance(all_task)
            if result.status == "failed":
                failed += 1
                console.print(f"[red]failed[/] {job.label()}: {result.message}")
            elif result.status == "skipped":
                console.print(f"[dim]skipped[/] {job.label()}: {result.message} ({result.path})")
            else:
                rec = result.record
                synthetic = rec["dataset"]["synthetic"]
                console.print(_summary_line(job, rec))
    if synthetic:
        console.print("[bold yellow]These results are on SYNTHETIC FairVLMed-shaped data, not the real dataset.[/]")
    console.print(f"Results under {runner.options.out}/ — show them with `fairbench table --out {runner.options.out}`.")
    if failed:
        raise typer.Exit(1)


def _summary_line(job, rec) -> str:
    test = rec["metrics"]["test"]
    attr = job.attribute or "race"
    a = test["attributes"][attr]
    fmt = lambda v: "nan" if v is None else f"{100 * v:.1f}"  # noqa: E731
    tag = " [yellow]SYNTHETIC[/]" if rec["dataset"]["synthetic"] else ""
    sel = rec["selection"]
    return (f"[green]done[/] {job.label()}: AUC {fmt(test['auc'])}, {attr} ES-AUC {fmt(a['es_auc'])}, "
            f"DPD {fmt(a['dpd'])}, EOD {fmt(a['eod'])} (epoch {sel['epoch']}, {sel['label']}; "
            f"{rec['timings']['total_s']:.0f}s){tag}")
