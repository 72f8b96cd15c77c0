"""`fairbench metrics FILE`: the metric suite of one predictions file, as a table or JSON.

Reads what the harness writes (predictions_{split}.csv: sample, label, score and one column of
integer group codes per protected attribute) or any CSV/Parquet with label, score and attribute columns
holding codes or group names. The dataset (--dataset) names the default attribute columns and the
groups. Bad files exit with code 2 and one line naming the column or row (rows count from 1 after the
header).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import typer

from fairbench.commands.common import DATASET_HELP, PLUGIN_HELP, load_dataset


class _BadFile(Exception):
    """A predictions file the suite cannot read; the message is the one line shown to the user."""


def metrics(
    file: Path = typer.Argument(..., help="Predictions file (.csv or .parquet) with label, score and "
                                "attribute columns (the dataset's attributes: codes or group names)."),
    json_out: bool = typer.Option(False, "--json", help="Print the suite as JSON to stdout, not tables."),
    threshold: float = typer.Option(0.5, "--threshold", help="Predicted label = score >= threshold."),
    n_bootstrap: int = typer.Option(0, "--bootstrap", metavar="N",
                                    help="Add percentile CIs from N bootstrap resamples of rows (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    ci: float = typer.Option(0.95, "--ci", help="Bootstrap interval level."),
    attr: list[str] = typer.Option(None, "--attr", help="Attribute column to evaluate (repeatable). "
                                   "Default: whichever of the dataset's attributes the file has."),
    label_col: str = typer.Option("label", "--label-col", help="Column with the 0/1 ground truth."),
    score_col: str = typer.Option("score", "--score-col", help="Column with the positive-class score."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
) -> None:
    """Compute every registered metric (`fairbench list metrics`: AUC, accuracy, ES-AUC, ES-Acc, DPD, EOD, per-group
    rates, and any a plugin adds) of a predictions file."""
    ds = load_dataset(dataset, plugin)
    try:
        labels, scores, attributes = _read(file, label_col, score_col, attr or None, list(ds.attributes))
        if n_bootstrap < 0:
            raise _BadFile(f"--bootstrap must be >= 0, got {n_bootstrap}")
        if n_bootstrap and not 0.0 < ci < 1.0:
            raise _BadFile(f"--ci must be between 0 and 1 (e.g. 0.95), got {ci}")
        suite, boot, notes = _compute(file, labels, scores, attributes, threshold, n_bootstrap, seed, ci,
                                      ds.attributes)
    except _BadFile as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    for note in notes:
        typer.echo(f"warning: {note}", err=True)
    if json_out:
        payload = suite.to_dict()
        if boot is not None:
            payload["bootstrap"] = boot.to_dict()
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        _print_tables(file, suite, boot, list(ds.attributes))


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        import pyarrow  # noqa: F401 - pandas' Parquet engine, the optional `parquet` extra
    except ImportError:
        raise _BadFile(f"{path}: reading Parquet needs pyarrow; pip install 'fairbench-medvlm[parquet]'") from None
    return pd.read_parquet(path, engine="pyarrow")


def _read(path: Path, label_col: str, score_col: str, attr_cols: list[str] | None,
          default_cols: list[str]) -> tuple[Any, Any, dict]:
    import numpy as np
    import pandas as pd

    if not path.is_file():
        raise _BadFile(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = _read_parquet(path)
        else:
            raise _BadFile(f"{path}: unknown file type {suffix!r}; use a .csv or .parquet file")
    except _BadFile:
        raise
    except Exception as exc:  # parser errors differ by engine; all mean "not a readable table"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _BadFile(f"{path}: cannot read as {suffix[1:]}: {first}") from None
    if df.empty:
        raise _BadFile(f"{path}: no rows")
    wanted = [label_col, score_col] + (attr_cols or [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise _BadFile(f"{path}: missing column {missing[0]!r} (columns: {', '.join(map(str, df.columns))})")

    score = pd.to_numeric(df[score_col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(score))
    if bad.size:
        i = int(bad[0])
        raw = df[score_col].iloc[i]
        what = "NaN" if pd.isna(raw) or str(raw).lower() == "nan" else f"{raw!r}, not a finite number"
        raise _BadFile(f"{path}: row {i + 1}: {score_col} is {what}")
    label = pd.to_numeric(df[label_col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~((label == 0) | (label == 1)))
    if bad.size:
        i = int(bad[0])
        raw = df[label_col].iloc[i]
        raw = raw.item() if hasattr(raw, "item") else raw
        raise _BadFile(f"{path}: row {i + 1}: {label_col} is {raw!r}; labels must be 0 or 1")

    cols = attr_cols if attr_cols is not None else [c for c in default_cols if c in df.columns]
    attributes = {c: (df[c].to_numpy() if df[c].dtype.kind in "biuf" else df[c].astype(object).to_numpy())
                  for c in cols}
    return label.astype(np.int8), score, attributes


def _compute(path: Path, labels: Any, scores: Any, attributes: dict, threshold: float, n_bootstrap: int,
             seed: int, ci: float, group_names: dict[str, dict[int, str]]) -> tuple[Any, Any, list[str]]:
    from fairbench.metrics import MetricInputError, MetricWarning, bootstrap, evaluate

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MetricWarning)
            suite = evaluate(labels, scores, attributes, threshold=threshold, group_names=group_names)
        boot = None
        if n_bootstrap:
            boot = bootstrap(labels, scores, attributes, n_resamples=n_bootstrap, seed=seed, ci=ci,
                             threshold=threshold, group_names=group_names)
    except MetricInputError as exc:
        if exc.row is not None and exc.reason:
            raise _BadFile(f"{path}: row {exc.row + 1}: {exc.field} is {exc.value!r}; {exc.reason}") from None
        raise _BadFile(f"{path}: {exc}") from None
    notes = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
    return suite, boot, notes


def _cell(info: Any, value: float, interval: tuple[float, float] | None, inline: bool = False) -> str:
    """Value as the papers print it; a bootstrap interval goes on a dim second line to keep columns narrow."""
    text = info.display(value)
    if interval is not None and text != "-":
        lo, hi = (info.display(x, digits=1) for x in interval)
        text += f" [{lo}–{hi}]" if inline else f"\n[dim]{lo}–{hi}[/dim]"
    return text


def _scaled(metrics: list[Any]) -> str:
    """'× 100', naming the metrics printed unscaled (the Brier score)."""
    plain = [m.label for m in metrics if not m.scale_100 and not m.count]
    return "× 100" + (f" except {', '.join(plain)}" if plain else "")


def _print_tables(path: Path, suite: Any, boot: Any, dataset_attributes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from fairbench.metrics import get_metric, metrics_at

    def iv(*key: str) -> tuple[float, float] | None:
        return boot.interval(*key) if boot is not None else None

    # A pipe or file gets a wide fixed layout instead of rich's 80-column default, wide enough for every column.
    widest = max(len(metrics_at("attribute")), len(metrics_at("group"))) + 2
    console = Console(width=None if sys.stdout.isatty() else max(160, 14 * widest))
    ci_note = f", {boot.ci:.0%} bootstrap CIs from {boot.n_resamples} resamples" if boot else ""
    overall = ", ".join(f"{m.label} {_cell(m, suite.values[m.name], iv(m.name), inline=True)}"
                        for m in metrics_at("overall") if not m.count)
    console.print(f"[bold]{path}[/bold]: n={suite.n}, threshold {suite.threshold:g}; {overall} (× 100{ci_note})")
    if not suite.attributes:
        console.print(f"no attribute columns found ({'/'.join(dataset_attributes) or 'the dataset has none'}); "
                      "use --attr or --dataset")
        return
    attribute_metrics = metrics_at("attribute")
    table = Table(title=f"Per attribute ({_scaled(attribute_metrics)}; ↑ higher is better, ↓ lower; "
                        "AUC std/range: group AUC disparity ÷ AUC)")
    table.add_column("Attribute")
    for m in attribute_metrics:
        table.add_column(f"{m.label} {m.arrow}", justify="right")
    for name, a in suite.attributes.items():
        table.add_row(name, *[_cell(m, a.values[m.name], iv(name, m.name)) for m in attribute_metrics])
    console.print(table)

    counts = [m for m in metrics_at("group") if m.count]
    rates = [m for m in metrics_at("group") if not m.count]
    groups = Table(title=f"Per group ({_scaled(rates)})")
    for col in ("Attribute", "Group"):
        groups.add_column(col, justify="left")
    for m in counts + rates:
        groups.add_column(f"{m.label} {m.arrow}".strip(), justify="right")
    for name, a in suite.attributes.items():
        for gname, g in a.groups.items():
            cells = [get_metric(m.name).display(g.values[m.name]) for m in counts]
            cells += [_cell(m, g.values[m.name], iv(name, "groups", gname, m.name)) for m in rates]
            groups.add_row(name, gname, *cells)
    console.print(groups)
