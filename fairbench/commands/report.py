"""`fairbench report`: one self-contained HTML page with the protocol, the tables and the figures."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import (
    PLUGIN_OPTION,
    STUDY_HELP,
    fail,
    load_plugins_or_fail,
    load_results_reporting,
    load_study_or_fail,
    split_list,
)


def report(
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder written by `fairbench run`."),
    to: Path = typer.Option(None, "--to", help="HTML file to write (default: <out>/report.html)."),
    attr: str = typer.Option(None, "--attr", "-a", help="Evaluation attributes, comma-separated (default: all)."),
    compare: str = typer.Option("paper", "--compare",
                                help="'paper' (default): published Fair-MoE numbers next to real-data rows; 'none'."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Embed the figures (slower)."),
    study: str = typer.Option(None, "--study", help=STUDY_HELP),
    plugin: list[str] = PLUGIN_OPTION,
) -> None:
    """Tables, figures (embedded as base64 PNG) and the protocol: data, selection rule, seeds, versions."""
    from fairbench.report.html import build_report, write_report
    from fairbench.report.paper import PaperTableError, PaperTables

    if compare not in ("paper", "none"):
        fail(f"--compare {compare!r}: choose 'paper' or 'none'")
    load_plugins_or_fail(plugin, methods=study is not None)  # layouts and metrics may come from plugins
    chosen = load_study_or_fail(study, plugin) if study else None
    loaded = load_results_reporting(out, study=chosen)
    if chosen and attr is None and chosen[0].attributes:
        attr = ",".join(chosen[0].attributes)
    paper = None
    if compare == "paper":
        try:
            paper = PaperTables.load(out=out)
        except PaperTableError as exc:
            typer.echo(f"warning: {exc}; the report is written without the published numbers", err=True)
    page, problems = build_report(loaded, paper=paper, attrs=split_list(attr), plots=plots, source=str(out))
    for problem in problems[len(loaded.problems):]:
        typer.echo(f"warning: {problem}", err=True)
    target = to if to is not None else Path(out) / "report.html"
    try:
        write_report(target, page)
    except OSError as exc:
        fail(f"cannot write {target} ({exc}); pass a writable --to path")
    typer.echo(f"wrote {target} ({len(loaded.records)} runs{'' if loaded.records else '; nothing to show'})")
    if not loaded.records:
        raise typer.Exit(1)
