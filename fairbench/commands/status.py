"""`fairbench status`: where every run of a results folder stands (done, running, stale, failed, pending).

It reads files only, so it answers for runs trained by any launcher on any host sharing the folder. With
`--method` or `--study` (and run's other job options, through the same builder `run` uses) it plans exactly the
jobs `fairbench run` would and also lists those that have no folder yet.
"""

from __future__ import annotations

from pathlib import Path

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
    fail,
    job_request,
    load_plugins_or_fail,
    plan_request,
)


def status(
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder written by `fairbench run`."),
    method: str = METHOD_OPTION,
    arch: str = ARCH_OPTION,
    attr: str = ATTR_OPTION,
    seeds: int = SEEDS_OPTION,
    data: str = DATA_OPTION,
    epochs: int = EPOCHS_OPTION,
    set_: list[str] = SET_OPTION,
    protocol: str = PROTOCOL_OPTION,
    select: str = SELECT_OPTION,
    pretrained: str = PRETRAINED_OPTION,
    text_source: str = TEXT_SOURCE_OPTION,
    plugin: list[str] = PLUGIN_OPTION,
    dataset: str = DATASET_OPTION,
    study: str = STUDY_OPTION,
) -> None:
    """Per run: pending / running (host, pid, epochs, heartbeat age) / done / failed / stale, and totals. With
    --method or --study: exactly the runs `fairbench run` with the same options trains, folder or not."""
    from fairbench.runs.status import status_of, totals

    planned = None
    if method is not None or study is not None:
        load_plugins_or_fail(plugin)
        request = job_request(method=method, arch=arch, attr=attr, seeds=seeds, protocol=protocol, select=select,
                              dataset=dataset, set_=set_, study=study)
        planned = plan_request(request, out, data=data,
                               pretrained=None if pretrained.lower() == "none" else pretrained,
                               text_source=text_source, epochs=epochs, plugins=tuple(plugin or ()))
    elif not out.is_dir():
        fail(f"results folder {out} does not exist; pass --out, or --method/--study ... to list the jobs a run "
             "would train")
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
