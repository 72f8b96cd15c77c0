"""`fairbench status`: where every run of a results folder stands (done, running, stale, failed, pending).

It reads files only, so it answers for runs trained by any launcher on any host sharing the folder. With
`--method` (and run's other job options) it plans the same jobs `fairbench run` would and also lists those
that have no folder yet.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import PLUGIN_HELP, fail, load_methods, split_list


def status(
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder written by `fairbench run`."),
    method: str = typer.Option(None, "--method", "-m", help="List exactly the jobs `fairbench run` would run with "
                               "these job options, folder or not (default: every run folder under --out)."),
    arch: str = typer.Option("tiny", "--arch", help="As for `fairbench run` (with --method)."),
    attr: str = typer.Option(None, "--attr", "-a", help="As for `fairbench run` (with --method)."),
    seeds: int = typer.Option(3, "--seeds", "-s", min=1, help="As for `fairbench run` (with --method)."),
    data: str = typer.Option(None, "--data", help="As for `fairbench run` (with --method)."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="As for `fairbench run` (with --method)."),
    set_: list[str] = typer.Option(None, "--set", help="As for `fairbench run` (with --method)."),
    select: str = typer.Option(None, "--select", help="As for `fairbench run` (with --method)."),
    pretrained: str = typer.Option("default", "--pretrained", help="As for `fairbench run` (with --method)."),
    text_source: str = typer.Option(None, "--text-source", help="As for `fairbench run` (with --method)."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    dataset: str = typer.Option(None, "--dataset", help="As for `fairbench run` (with --method)."),
) -> None:
    """Per run: pending / running (host, pid, epochs, heartbeat age) / done / failed / stale, and totals."""
    from fairbench.runs.status import status_of, totals

    planned = None
    if method is not None:
        planned = _plan(out, method, arch, attr, seeds, data, epochs, set_, select, pretrained, text_source,
                        plugin, dataset)
    elif not out.is_dir():
        fail(f"results folder {out} does not exist; pass --out, or --method ... to list the jobs a run would train")
    try:
        statuses = status_of(out, planned)
    except ValueError as exc:  # a malformed $FAIRBENCH_CLAIM_TIMEOUT
        fail(str(exc))
    width = max((len(s.label) for s in statuses), default=0)
    for s in statuses:
        where = s.run_dir.relative_to(out) if s.run_dir.is_relative_to(out) else s.run_dir
        detail = f"{s.detail}  " if s.detail else ""
        typer.echo(f"{s.state:8} {s.label:{width}}  {detail}({where})")
    typer.echo(totals(statuses))


def _plan(out, method, arch, attr, seeds, data, epochs, set_, select, pretrained, text_source, plugin, dataset):
    from fairbench.datasets import DatasetError
    from fairbench.method import SettingsError
    from fairbench.registry import UnknownNameError, expand_methods, get_dataset
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_methods(plugin)
    try:
        methods = expand_methods(method)
        spec = get_dataset(dataset)
    except UnknownNameError as exc:
        fail(str(exc))
    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r} is not key=value (e.g. --set fair_lambda=1e-5)")
        overrides[key.strip()] = value.strip()
    options = RunOptions(out=out, dataset=spec.name, data=data,
                         pretrained=None if pretrained.lower() == "none" else pretrained,
                         text_source=text_source, epochs=epochs, select=select, overrides=overrides,
                         plugins=tuple(plugin or ()))
    try:
        return plan(options, expand_jobs(methods, split_list(arch) or ["tiny"], split_list(attr),
                                         list(range(seeds)), dataset=spec.name))
    except (SettingsError, DatasetError, ValueError) as exc:
        fail(str(exc))
