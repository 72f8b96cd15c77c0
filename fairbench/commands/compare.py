"""`fairbench compare A B`: is A's AUC / ES-AUC (every metric registered with compare=True) difference from B
distinguishable from noise?

Paired over the same seeds (t-test, sign test) and the same test samples (paired bootstrap).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fairbench.commands.common import (
    PLUGIN_OPTION,
    RESULTS_DATASET_HELP,
    check_select,
    fail,
    load_plugins_or_fail,
    load_results_reporting,
    registered,
    split_list,
)


def compare(
    method_a: str = typer.Argument(..., help="Method A (e.g. fairmoe)."),
    method_b: str = typer.Argument(..., help="Method B (e.g. fairclip), or a comma list to compare A with each; "
                                   "p-values are also given Benjamini–Hochberg adjusted over all comparisons."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder written by `fairbench run`."),
    attr: str = typer.Option(None, "--attr", "-a", help="Evaluation attribute(s), comma-separated (default: the "
                             "first of the results' attributes)."),
    arch: str = typer.Option(None, "--arch", help="Only this backbone (default: every one both methods ran)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=RESULTS_DATASET_HELP),
    select: str = typer.Option(None, "--select", help="Only runs selected by this rule: " + registered("select-rules")
                               + "."),
    config_a: str = typer.Option(None, "--config-a", help="Config hash (prefix) of A, when A ran with several."),
    config_b: str = typer.Option(None, "--config-b", help="Config hash (prefix) of B, when B ran with several."),
    resamples: int = typer.Option(1000, "--resamples", "-B", help="Bootstrap resamples per seed."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level (two-sided); CIs are 1 − alpha."),
    bootstrap: bool = typer.Option(True, "--bootstrap/--no-bootstrap", help="Paired bootstrap over test samples."),
    fmt: str = typer.Option("terminal", "--format", "-f", help="terminal | json"),
    metric: str = typer.Option(None, "--metric", help="Metrics to compare, comma list (default: every metric "
                               "registered for comparison: " + registered("compare-metrics") + ")."),
    plugin: list[str] = PLUGIN_OPTION,
) -> None:
    """Paired comparison of every compared metric (AUC, ES-AUC, any registered with compare=True): bootstrap over test
    samples per seed, t-test/sign test over seeds."""
    from fairbench.report.significance import CompareError, compare_methods

    if fmt not in ("terminal", "json"):
        fail(f"--format {fmt!r} is not one of terminal, json")
    if not 0 < alpha < 1:
        fail(f"--alpha {alpha} must be between 0 and 1, e.g. 0.05")
    if resamples < 1:
        fail(f"--resamples {resamples} must be at least 1, e.g. 1000")
    load_plugins_or_fail(plugin, methods=False)  # metrics may come from plugins
    check_select(select)
    chosen = _metrics(split_list(metric))
    loaded = load_results_reporting(out, dataset)
    if not loaded.records:
        raise typer.Exit(1)
    from fairbench.report.aggregate import eval_attributes
    from fairbench.report.significance import adjust_comparisons

    comparisons, errors = [], []
    for other in split_list(method_b) or [method_b]:
        for one in split_list(attr) or eval_attributes(loaded.frame)[:1]:
            try:
                comparisons += compare_methods(loaded.records, method_a, other, one, arch=arch,
                                               select=select, config_a=config_a, config_b=config_b,
                                               n_resamples=resamples, alpha=alpha, bootstrap=bootstrap,
                                               metrics=chosen)
            except CompareError as exc:
                errors.append(str(exc))
    adjust_comparisons(comparisons)
    if not comparisons:
        fail(errors[0] if len(errors) == 1 else " | ".join(errors))
    for error in errors:
        typer.echo(f"warning: {error}", err=True)
    if fmt == "json":
        from fairbench.report.compare_render import to_json

        typer.echo(json.dumps(to_json(comparisons), indent=2))
    else:
        from fairbench.report.compare_render import render_comparisons

        typer.echo(render_comparisons(comparisons), nl=False)


def _metrics(names: list[str] | None) -> list:
    """The registered metrics to compare (default: those registered with compare=True); one line on a bad name."""
    from fairbench.metrics import compare_metrics, get_metric
    from fairbench.registry import UnknownNameError

    if not names:
        return compare_metrics()
    try:
        chosen = [get_metric(n) for n in names]
    except UnknownNameError as exc:
        fail(f"--metric: {exc}")
    bad = [m.name for m in chosen if m.count or not {"overall", "attribute"} & set(m.levels)]
    if bad:
        fail(f"--metric {', '.join(bad)}: compare tests overall or per-attribute metrics, not counts or group rates")
    return chosen
