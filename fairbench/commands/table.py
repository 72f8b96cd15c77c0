"""`fairbench table`: the papers' tables from a results folder (no retraining).

Synthetic and real data, and the two model-selection rules, always get separate tables.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import (
    PLUGIN_OPTION,
    RESULTS_DATASET_HELP,
    STUDY_HELP,
    check_select,
    fail,
    load_plugins_or_fail,
    load_results_reporting,
    load_study_or_fail,
    registered,
    split_list,
)

FORMAT_HELP = "terminal | markdown | latex | csv (wide, × 100) | long-csv (tidy: run × attribute × group × metric, raw)"


def table(
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder written by `fairbench run`."),
    attr: str = typer.Option(None, "--attr", "-a", help="Evaluation attributes, comma-separated (default: all)."),
    fmt: str = typer.Option("terminal", "--format", "-f", help=FORMAT_HELP),
    layout: str = typer.Option("table1", "--layout", "-l", help=registered("layouts") + ". Table 1's columns: "
                               + registered("table-metrics") + "."),
    compare: str = typer.Option(None, "--compare", help="'paper': show the Fair-MoE paper's numbers and Δ."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=RESULTS_DATASET_HELP),
    select: str = typer.Option(None, "--select", help="Only runs selected by this rule: " + registered("select-rules")
                               + "."),
    spread_warn: float = typer.Option(0.10, "--spread-warn", metavar="SHARE",
                                      help="Flag (⚠) a ↑ value (AUC, ES-AUC) whose std over seeds exceeds this "
                                           "share of its mean, naming each seed's value; 0 turns it off. "
                                           "↓ gaps (DPD, EOD) sit near 0 and are never flagged."),
    study: str = typer.Option(None, "--study", help=STUDY_HELP),
    threshold: str = typer.Option("0.5", "--threshold", help="Decision threshold of the thresholded metrics (Acc, "
                                  "DPD, EOD, FNR/TPR gaps): 0.5 (the published protocol), youden or f1 (chosen on "
                                  "each run's VALIDATION predictions, never on test labels); named in every table."),
    min_group: int = typer.Option(30, "--min-group", metavar="N", help="An intersectional attribute's (--attr "
                                  "a+b, e.g. sex+site) groups with fewer test samples are shown as too small and "
                                  "left out of its gaps."),
    plugin: list[str] = PLUGIN_OPTION,
) -> None:
    """Mean ± std over seeds per method/arch, best per column marked, missing seeds and wide spreads flagged."""
    from fairbench.registry import LAYOUTS, UnknownNameError
    from fairbench.report.paper import PaperTableError, PaperTables
    from fairbench.report.render import FORMATS, render_csv, render_latex, render_markdown, render_terminal
    from fairbench.report.tables import build_tables

    if fmt not in FORMATS:
        fail(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    load_plugins_or_fail(plugin, methods=study is not None)  # layouts and metrics may come from plugins
    try:
        LAYOUTS.get(layout)
    except UnknownNameError as exc:
        fail(f"--layout: {exc}")
    if compare not in (None, "paper"):
        fail(f"--compare {compare!r}: only 'paper' (the Fair-MoE paper's Tables 1–6) is available")
    check_select(select)
    if not 0 <= spread_warn < 10:
        fail(f"--spread-warn {spread_warn} must be a share of the mean ≥ 0, e.g. 0.1 (10 %) or 0 (off)")
    from fairbench.report.rescore import JOIN, THRESHOLD_LABELS, THRESHOLD_RULES

    if threshold not in THRESHOLD_RULES:
        fail(f"--threshold {threshold!r} is not one of {', '.join(THRESHOLD_RULES)} (a threshold fitted on test "
             "labels is never offered)")
    if min_group < 1:
        fail(f"--min-group {min_group} must be at least 1, e.g. 30")
    chosen = load_study_or_fail(study, plugin) if study else None
    loaded = load_results_reporting(out, dataset, study=chosen)
    frame = loaded.frame
    if frame.empty:
        raise typer.Exit(1)
    rescored = None
    intersections = [a for a in split_list(attr) or [] if JOIN in a]
    if threshold != "0.5" or intersections:
        from fairbench.report.aggregate import long_frame
        from fairbench.report.rescore import rescore

        rescored = rescore(loaded.records, threshold=threshold, intersections=intersections, min_size=min_group)
        for note in rescored.notes:
            typer.echo(f"warning: {note}", err=True)
        frame = long_frame(rescored.records)
        if frame.empty:
            fail("no run has the saved predictions this table needs (see the warnings above)", 1)
    if chosen and attr is None and chosen[0].attributes:  # the study's attributes that have results
        present = set(frame["eval_attribute"])
        attr = ",".join(a for a in chosen[0].attributes if a in present) or None
    if fmt == "long-csv":
        frame = _filter(frame, select, split_list(attr))
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    paper = None
    if compare == "paper":
        try:
            paper = PaperTables.load(out=out)
        except PaperTableError as exc:
            fail(str(exc))
    attrs = split_list(attr)
    if attrs:
        known = sorted(set(frame["eval_attribute"]) - {"overall"})
        unknown = [a for a in attrs if a not in known]
        if unknown:
            fail(f"--attr {','.join(unknown)}: not in the results (available: {', '.join(known)})")
    tables = build_tables(frame, layout=layout, attrs=attrs, select=select, paper=paper, spread=spread_warn)
    if not tables:
        fail(f"no runs match --dataset {dataset or '*'} --select {select or '*'} --attr {attr or '*'} in {out}", 1)
    if rescored is not None:
        for t in tables:
            if threshold != "0.5":
                t.title += f" · threshold: {THRESHOLD_LABELS[threshold]}"
            t.notes[:0] = rescored.table_notes(threshold, t.attribute)
    if fmt == "terminal":
        import shutil
        import sys

        tty = sys.stdout.isatty()
        width = shutil.get_terminal_size((400, 50)).columns if tty else 400
        typer.echo(render_terminal(tables, color=tty, width=width), nl=False)
    else:
        render = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv}[fmt]
        typer.echo(render(tables), nl=False)


def _filter(frame, select: str | None, attrs: list[str] | None):
    if select is not None:
        frame = frame[frame["selection"] == select]
    if attrs:
        frame = frame[frame["eval_attribute"].isin(attrs + ["overall"])]
    return frame
