"""Tables as plain data, and the two table shapes layouts build from (fairbench.report.layouts registers them):
one table per attribute with a column per metric (`per_attribute_tables`, Table 1), and one table with a column
per attribute for one metric (`across_attributes_table`, the ablation Tables 2–6).

Building a table is separate from rendering it, so terminal, markdown, LaTeX, CSV and HTML all show
the same numbers, the same best markers and the same warnings. A column's label, direction, scale and digits
come from its registered metric (fairbench.metrics.catalog).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from fairbench.metrics.catalog import get_metric
from fairbench.report.aggregate import (
    eval_attributes,
    for_attribute,
    seed_problem,
    selection_label,
    summarise,
    trained_on,
)
from fairbench.report.paper import PAPER_CITATION, PAPER_SELECTION, PaperTables, PaperValue

STD_NOTE = "mean ± std over seeds (sample std, ddof = 1)"
# A cell of a ↑ metric (AUC, ES-AUC, accuracy) is flagged when its std over seeds exceeds this share of its
# mean: seed-to-seed spread of a few points is normal there, a spread of ~20 % of the mean means one seed
# collapsed. ↓ metrics (DPD, EOD, AUC gaps) are gaps near zero, where any spread is a large share of the
# mean, so they are never flagged by this rule.
DEFAULT_SPREAD = 0.10
# The paper verdict asks whether a published value lies within this interval of our mean over seeds (t-based).
VERDICT_LEVEL = 0.95
# Frame columns that split rows besides method, arch and variant: a run's usage mode never pools with another's.
ROW_MODE = ("mode", "single_run", "trainable")


@dataclass(frozen=True)
class Column:
    """`metric`'s values for `attribute` (None: the table's own attribute), under `label`."""

    key: str
    label: str
    metric: str
    attribute: str | None = None

    @property
    def higher_is_better(self) -> bool:
        return bool(get_metric(self.metric).higher_is_better)

    @property
    def arrow(self) -> str:
        return get_metric(self.metric).arrow

    @property
    def scale(self) -> float:
        return get_metric(self.metric).scale

    @property
    def digits(self) -> int:
        return get_metric(self.metric).digits


@dataclass
class Cell:
    """One mean ± std (already scaled as its metric prints, e.g. × 100) over `n` non-null seed values."""

    mean: float
    std: float
    n: int
    seeds: tuple[int, ...]
    best: bool = False
    paper: PaperValue | None = None
    per_seed: tuple[tuple[int, float], ...] = ()  # (seed, scaled value) for the non-null values
    wide: bool = False  # std over seeds above the table's spread share of the mean (see DEFAULT_SPREAD)
    digits: int = 2  # decimals its metric prints

    @property
    def diff(self) -> float:
        """Ours − published (× 100), NaN without a published value."""
        return self.mean - self.paper.mean if self.paper is not None else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % interval of our mean over seeds: mean ± t(0.975, n − 1) · std / √n (NaN with fewer than two
        seeds, where no spread is measured)."""
        if self.n < 2 or math.isnan(self.std) or math.isnan(self.mean):
            return (math.nan, math.nan)
        from scipy.stats import t

        half = float(t.ppf(0.5 + VERDICT_LEVEL / 2, self.n - 1)) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    @property
    def verdict(self) -> str:
        """Where the published value lies against our seeds' 95 % interval: "inside" (reproduced), "above" or
        "below" it; "one seed" when no interval exists; "" without a published value."""
        if self.paper is None or math.isnan(self.paper.mean):
            return ""
        lo, hi = self.interval
        if math.isnan(lo):
            return "one seed"
        return "above" if self.paper.mean > hi else "below" if self.paper.mean < lo else "inside"


@dataclass
class Row:
    method: str
    arch: str
    variant: str
    cells: dict[str, Cell]
    seeds: tuple[int, ...] = ()
    flag: str = ""
    mode: str = "fine-tune"  # how the runs used the model (fairbench.method.Method.mode, or the adapter)
    single_run: bool = False  # a seed-independent mode (zero-shot): one run, no spread over seeds
    trainable: int = -1  # parameters the runs trained (-1: not recorded)
    show_mode: bool = False  # the table mixes modes or shows one that is not fine-tuning: the label names it

    @property
    def label(self) -> str:
        base = f"{self.method} [{self.variant}]" if self.variant else self.method
        if self.show_mode and self.mode.replace("-", "") not in self.method.replace("-", ""):
            base += f" · {self.mode}"  # a method named after its mode (zeroshot, linear-probe) already says it
        return base + (" (single run)" if self.single_run else "")

    @property
    def name(self) -> str:
        """method/arch plus the differing settings, for notes."""
        return f"{self.method}/{self.arch}" + (f" [{self.variant}]" if self.variant else "")


@dataclass
class Table:
    title: str
    caption: str
    layout: str
    dataset: str
    synthetic: bool
    selection: str
    attribute: str | None
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    compare: bool = False
    spread: float = DEFAULT_SPREAD
    protocol: str = ""
    lead: str = ""  # what the table shows, when its columns do not say it (first in the caption)
    paper_table: int | None = None  # the paper's table this layout mirrors: its numbers need no table note


def _title(heading: str, dataset: str, synthetic: bool, selection: str, protocol: str) -> str:
    warn = "SYNTHETIC DATA (not the real dataset) — " if synthetic else ""
    return f"{warn}{heading} · dataset: {dataset} · protocol: {protocol} · selection: {selection_label(selection)}"


def _scale_note(columns: list[Column]) -> str:
    """', × 100' when every column is printed × 100 (the papers' convention), else which ones are."""
    scaled = [c.label for c in columns if c.scale == 100.0]
    if len(scaled) == len(columns):
        return ", × 100"
    return f", × 100 for {', '.join(scaled)}" if scaled else ""


def _caption(table: Table, n_max: int, compare: bool, spread: float | None) -> str:
    """`spread`: the share behind a ⚠ on a value, when any value carries one."""
    parts = [f"{STD_NOTE}{_scale_note(table.columns)}; n = seeds per row (up to {n_max})",
             "↑ higher is better, ↓ lower is better", "best per column marked"]
    if spread is not None:
        parts.append(f"⚠ on a value: its std over seeds is above {spread:.0%} of its mean (see the note)")
    if any(r.single_run for r in table.rows):
        parts.append("(single run): a seed-independent mode (zero-shot) scored once, so no std over seeds")
    counts = [f"{r.label} {_count(r.trainable)}" for r in table.rows if r.trainable >= 0]
    if counts:
        parts.append("trainable parameters: " + ", ".join(counts))
    if table.lead:
        parts.insert(0, table.lead)
    if compare:
        parts.append(f"paper = {PAPER_CITATION}; Δ = ours − paper; verdict = the published value inside, above or "
                     f"below our seeds' {VERDICT_LEVEL:.0%} interval")
    return "; ".join(parts) + "."


def _count(n: int) -> str:
    """A parameter count as 7.57M / 12.3k / 513."""
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    return f"{n / 1e3:.3g}k" if n >= 1000 else str(n)


def _mark_best(columns: list[Column], rows: list[Row]) -> None:
    for col in columns:
        cells = [r.cells[col.key] for r in rows if col.key in r.cells and not math.isnan(r.cells[col.key].mean)]
        if len(cells) < 2:
            continue
        rounded = [round(c.mean, col.digits) for c in cells]
        target = max(rounded) if col.higher_is_better else min(rounded)
        for cell, value in zip(cells, rounded, strict=True):
            cell.best = value == target


def _far_off(cell: Cell, spread: float) -> list[int]:
    """Seeds whose value lies more than `spread` × |median| from the median of the cell's seeds."""
    values = sorted(v for _, v in cell.per_seed)
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    far = [s for s, v in cell.per_seed if abs(v - median) > spread * abs(median)]
    return far if len(far) < len(cell.per_seed) else []


def _spread_reason(col: Column, cell: Cell, spread: float) -> str:
    """Why a ↑ cell's spread is suspicious, naming each seed's value and the seeds far off ("" if fine)."""
    if spread <= 0 or not col.higher_is_better or cell.n < 2 or not cell.mean > 0 or not cell.std > spread * cell.mean:
        return ""
    cell.wide = True
    values = ", ".join(f"seed {s} = {v:.2f}" for s, v in cell.per_seed)
    far = _far_off(cell, spread)
    tail = f"; far off: seed {', '.join(map(str, far))}" if far else ""
    return f"{col.label} std {cell.std:.2f} is {cell.std / cell.mean:.0%} of its mean {cell.mean:.2f} ({values}{tail})"


def _flag_rows(columns: list[Column], rows: list[Row], spread: float) -> None:
    expected = max((len(r.seeds) for r in rows), default=0)
    for row in rows:
        reasons = []
        problem = "" if row.single_run else seed_problem(row.seeds, expected)
        if problem:
            reasons.append(problem)
        fewer = [k for k, c in row.cells.items() if len(c.seeds) < len(row.seeds)]
        if fewer:
            reasons.append(f"fewer seeds for {', '.join(fewer)}")
        undefined = [k for k, c in row.cells.items() if c.n < len(c.seeds)]
        if undefined:
            reasons.append(f"undefined values (e.g. a group without both classes) for {', '.join(undefined)}")
        present = [(col, row.cells[col.key]) for col in columns if col.key in row.cells]
        lone_best = [col.label for col, cell in present if cell.best and cell.n < 2 and not row.single_run]
        if lone_best:
            reasons.append(f"marked best for {', '.join(lone_best)} on a single seed: no spread over seeds "
                           "to tell it from noise")
        wide = [r for r in (_spread_reason(col, cell, spread) for col, cell in present) if r]
        if wide:
            reasons.append(f"spread over seeds above {spread:.0%} of the mean, a seed may have collapsed: "
                           + "; ".join(wide))
        row.flag = "; ".join(reasons)


def _rows(summary: pd.DataFrame, column_of: str, columns: list[Column]) -> list[Row]:
    """Pivot a summary (one line per row key × column) into Rows, sorted by method, arch, variant; each value
    scaled as its column's metric prints it."""
    by_key = {c.key: c for c in columns}
    rows: dict[tuple[str, str, str, str], Row] = {}
    for rec in summary.itertuples(index=False):
        key = (rec.method, rec.arch, rec.variant, rec.mode)
        row = rows.setdefault(key, Row(rec.method, rec.arch, rec.variant, {}, mode=rec.mode,
                                       single_run=bool(rec.single_run), trainable=int(rec.trainable)))
        col = by_key[getattr(rec, column_of)]
        per_seed = tuple((int(s), col.scale * v) for s, v in rec.per_seed)
        row.cells[col.key] = Cell(col.scale * rec.mean, col.scale * rec.std, int(rec.n), rec.seeds,
                                  per_seed=per_seed, digits=col.digits)
    for row in rows.values():
        row.seeds = tuple(sorted(set().union(*(c.seeds for c in row.cells.values()))))
    return [rows[k] for k in sorted(rows)]


def _variant_notes(rows: list[Row]) -> list[str]:
    notes = []
    split = sorted({(r.method, r.arch) for r in rows if r.variant
                    and sum((o.method, o.arch) == (r.method, r.arch) for o in rows) > 1})
    for method, arch in split:
        labels = [r.variant for r in rows if (r.method, r.arch) == (method, arch)]
        notes.append(f"{method}/{arch}: runs with different configs are shown as separate rows, not merged "
                     f"({'; '.join(labels)}).")
    return notes


def _attach_paper(table: Table, paper: PaperTables) -> None:
    used: set[int] = set()
    for row in table.rows:
        for col in table.columns:
            cell = row.cells.get(col.key)
            if cell is None:
                continue
            cell.paper = paper.get(col.attribute or table.attribute, row.method, row.arch, col.metric)
            if cell.paper is not None:
                used.add(cell.paper.table)
    table.compare = True
    if not used:
        table.notes.append("paper: no published numbers for these method/arch/attribute rows.")
    else:
        table.notes.append(f"paper: {PAPER_CITATION}; values from Table(s) {', '.join(map(str, sorted(used)))} "
                           "(Table 1 preferred where a number appears in several; the paper's Fair-MoE ES-AUC "
                           "differs between Table 1 and Tables 4–6).")
    table.notes.append(verdict_summary(table))
    if table.synthetic or table.dataset != paper.dataset:
        table.notes.append(f"paper numbers are on real {paper.dataset or 'other'} data; these runs are "
                           f"{'SYNTHETIC' if table.synthetic else table.dataset!r} data, so Δ is not a "
                           "reproduction check.")
    if table.selection != PAPER_SELECTION:
        table.notes.append("the paper kept the epoch with the best TEST AUC; these runs use "
                           f"{selection_label(table.selection)}, so expect lower numbers than published.")


def verdict_summary(table: Table) -> str:
    """How many published cells our runs reproduce: the published value inside our seeds' 95 % interval."""
    verdicts = [row.cells[c.key].verdict for row in table.rows for c in table.columns
                if c.key in row.cells and row.cells[c.key].verdict]
    counts = {v: verdicts.count(v) for v in ("inside", "above", "below", "one seed")}
    tested = counts["inside"] + counts["above"] + counts["below"]
    text = (f"verdict: {counts['inside']} of {tested} published cells reproduce (the published value lies inside our "
            f"seeds' {VERDICT_LEVEL:.0%} interval, mean ± t·std/√n); published above it: {counts['above']}, below "
            f"it: {counts['below']}")
    if counts["one seed"]:
        text += f"; {counts['one seed']} cell(s) with one seed have no interval"
    return text + "."


def _absent_notes(table: Table, part: pd.DataFrame) -> list[str]:
    """Why methods that ran on this dataset have no row (table1) or no cell (ablation) here.

    A method that trains on an attribute is evaluated only on that attribute, so after a run on one attribute
    another attribute's table would otherwise show an attribute-free method alone, without saying why.
    """
    trained = trained_on(part)
    one_attribute = table.attribute is not None  # absent runs have no row; else they have a row with a gap
    wanted = list(dict.fromkeys(c.attribute or table.attribute for c in table.columns))
    missing: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for (method, arch), attrs in sorted(trained.items()):
        if "" in attrs:
            continue  # trained on no attribute: evaluated on every one, never absent for this reason
        # an intersection a+b counts a run trained on one of its parts
        gaps = tuple(a for a in wanted if a not in attrs and not set(a.split("+")) & attrs)
        if not one_attribute and not any(r.method == method and r.arch == arch for r in table.rows):
            continue
        if gaps:
            missing.setdefault((gaps, tuple(sorted(attrs))), []).append(f"{method}/{arch}")
    notes = []
    for (gaps, attrs), names in missing.items():
        if one_attribute:
            notes.append(f"{', '.join(names)}: not trained on {gaps[0]} (trained on: {', '.join(attrs)}), so not "
                         f"in this table; add with `fairbench run --attr {gaps[0]}`.")
        else:
            notes.append(f"{', '.join(names)}: – for {', '.join(gaps)}: not trained on "
                         f"{'it' if len(gaps) == 1 else 'them'} (trained on: {', '.join(attrs)}).")
    return notes


def _finish(table: Table, paper: PaperTables | None, part: pd.DataFrame) -> Table:
    modes = {r.mode for r in table.rows}
    for row in table.rows:  # results of different modes never pool: each row names its mode where it matters
        row.show_mode = len(modes) > 1 or modes != {"fine-tune"}
    _mark_best(table.columns, table.rows)
    _flag_rows(table.columns, table.rows, table.spread)
    n_max = max((len(r.seeds) for r in table.rows), default=0)
    for row in table.rows:
        if row.flag:
            table.notes.append(f"⚠ {row.name}: {row.flag}.")
    table.notes.extend(_variant_notes(table.rows))
    table.notes.extend(_absent_notes(table, part))
    if table.selection == "test":
        table.notes.append("selection by best TEST AUC is the papers' optimistic rule (test data chose the epoch).")
    if paper is not None:
        _attach_paper(table, paper)
    wide = any(c.wide for r in table.rows for c in r.cells.values())
    table.caption = _caption(table, n_max, paper is not None, table.spread if wide else None)
    return table


@dataclass(frozen=True)
class Scope:
    """What a layout builds tables for: one part of the tidy frame that shares a dataset, synthetic flag, selection
    rule and protocol (`key`), never mixed, and the evaluation attributes wanted, in order."""

    frame: pd.DataFrame
    key: tuple[str, bool, str, str]
    attributes: list[str]
    layout: str
    paper: PaperTables | None = None
    spread: float = DEFAULT_SPREAD

    def table(self, heading: str, attribute: str | None, columns: list[Column], rows: list[Row], *, lead: str = "",
              paper_table: int | None = None) -> Table:
        """A finished Table (best marked, rows flagged, notes and caption written) of this scope."""
        dataset, synthetic, selection, protocol = self.key
        table = Table(_title(heading, dataset, synthetic, selection, protocol), "", self.layout, dataset, synthetic,
                      selection, attribute, columns, rows, spread=self.spread, protocol=protocol, lead=lead,
                      paper_table=paper_table)
        return _finish(table, self.paper, self.frame)


def per_attribute_tables(scope: Scope, metrics: list[str], heading: str, paper_table: int | None = None) -> list[Table]:
    """One table per evaluation attribute with a column per metric (`heading` may name `{attribute}`)."""
    tables = []
    for attr in scope.attributes:
        sub = for_attribute(scope.frame, attr)
        sub = sub[(sub["group"] == "") & sub["metric"].isin(metrics)]
        if sub.empty:
            continue
        summary = summarise(sub, ["method", "arch", "variant", *ROW_MODE, "metric"])
        present = set(sub["metric"])  # result files written before a metric existed lack it: no empty column
        columns = [Column(m, get_metric(m).label, m) for m in metrics if m in present]
        tables.append(scope.table(heading.format(attribute=attr), attr, columns, _rows(summary, "metric", columns),
                                  paper_table=paper_table))
    return tables


def across_attributes_table(scope: Scope, metric: str, heading: str, lead: str = "") -> list[Table]:
    """One table of `metric` with a column per evaluation attribute (empty when no run has it)."""
    parts = []
    for attr in scope.attributes:
        sub = for_attribute(scope.frame, attr)
        parts.append(sub[(sub["group"] == "") & (sub["metric"] == metric)])
    sub = pd.concat(parts) if parts else scope.frame.iloc[0:0]
    if sub.empty:
        return []
    summary = summarise(sub, ["method", "arch", "variant", *ROW_MODE, "eval_attribute"])
    present = [a for a in scope.attributes if a in set(summary["eval_attribute"])]
    label = get_metric(metric).label
    columns = [Column(a, f"{label} {a}", metric, attribute=a) for a in present]
    return [scope.table(heading, None, columns, _rows(summary, "eval_attribute", columns), lead=lead)]


def build_tables(frame: pd.DataFrame, layout: str = "table1", attrs: list[str] | None = None,
                 dataset: str | None = None, select: str | None = None,
                 paper: PaperTables | None = None, spread: float = DEFAULT_SPREAD) -> list[Table]:
    """Tables of a registered layout for a tidy frame: one set per (dataset, synthetic, selection rule, protocol),
    never mixed.

    `spread`: flag ↑-metric cells whose std over seeds exceeds this share of their mean (0 = never).
    """
    from fairbench.registry import LAYOUTS

    chosen = LAYOUTS.get(layout)
    if not spread >= 0:
        raise ValueError(f"spread share must be ≥ 0 (e.g. {DEFAULT_SPREAD}), got {spread}")
    if dataset is not None:
        frame = frame[frame["dataset"] == dataset]
    if select is not None:
        frame = frame[frame["selection"] == select]
    tables: list[Table] = []
    keys = ["dataset", "synthetic", "selection", "protocol"]
    for key, part in sorted(frame.groupby(keys, sort=False),
                            key=lambda kv: (kv[0][1], kv[0][0], kv[0][2] != "val", kv[0][3])):
        wanted = [a for a in eval_attributes(part) if attrs is None or a in attrs]
        tables.extend(chosen.build(Scope(part, key, wanted, chosen.name, paper, spread)))
    return tables


__all__ = ["DEFAULT_SPREAD", "Cell", "Column", "Row", "Scope", "Table", "across_attributes_table", "build_tables",
           "per_attribute_tables"]
