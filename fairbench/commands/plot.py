"""`fairbench plot`: trade-off, per-group AUC and per-group ROC figures (PNG and PDF) from a results folder."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import RESULTS_DATASET_HELP, check_select, fail, load_results_reporting, split_list

KINDS = ("tradeoff", "group_auc", "roc")


def plot(
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder written by `fairbench run`."),
    to: Path = typer.Option(None, "--to", help="Folder for the figures (default: <out>/plots)."),
    attr: str = typer.Option(None, "--attr", "-a", help="Evaluation attributes, comma-separated (default: all)."),
    kind: str = typer.Option(",".join(KINDS), "--kind", "-k", help=f"Figures, comma-separated: {', '.join(KINDS)}."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=RESULTS_DATASET_HELP),
    select: str = typer.Option(None, "--select", help="Only runs selected by this rule: val | test."),
) -> None:
    """AUC vs ES-AUC / DPD trade-off (mean ± std per method, faint seeds), per-group AUC bars, per-group ROC."""
    from fairbench.report.plots import make_plots

    kinds = tuple(split_list(kind) or KINDS)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        fail(f"--kind {','.join(bad)}: choose from {', '.join(KINDS)}")
    check_select(select)
    loaded = load_results_reporting(out, dataset)
    if loaded.frame.empty:
        raise typer.Exit(1)
    target = to if to is not None else Path(out) / "plots"
    try:
        plots = make_plots(loaded.records, loaded.frame, target, attrs=split_list(attr), select=select, kinds=kinds)
    except OSError as exc:
        fail(f"cannot write figures to {target} ({exc}); pass a writable --to folder")
    for problem in plots.problems:
        typer.echo(f"warning: {problem}", err=True)
    if not plots.files:
        fail(f"nothing to plot for --dataset {dataset or '*'} --select {select or '*'} --attr {attr or '*'}", 1)
    typer.echo(f"wrote {len(plots.files)} files to {target}:")
    for path in plots.files:
        typer.echo(f"  {path}")
