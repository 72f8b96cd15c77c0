"""The metrics: one registered `Metric` per number the suite reports, declared once.

A metric declares its computation, its display (column label, × 100 or not, good direction, digits) and where it
appears (a column of the per-attribute tables, a metric `fairbench compare` tests). The suite (`evaluate`,
`bootstrap`, result.json), the tables, `compare` and `fairbench metrics` all read this registry, so a new metric is
one `register_metric` call, in a plugin or here.

Two kinds of computation, both vectorised over bootstrap replicates (B weight vectors at once, kernel.py):
- `subset`: a number of any row subset (all rows, an attribute's known rows, one group), from `Stats`, whose arrays
  are (B, S) over S subsets; elementwise, so one call serves every subset. Reported at the `levels` it names.
- `between`: a number of one attribute across its groups, from `AttributeStats` (the attribute's rows, (B,), and
  its groups, (B, G)), returning (B,). Reported per attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fairbench.metrics.kernel import ECE_BINS, AttributeStats, Stats, div, equity_scaled, nan_min, nan_range, nan_std
from fairbench.registry import METRICS

LEVELS = ("overall", "attribute", "group")


@dataclass(frozen=True)
class Metric:
    """One number of the suite. `levels`: where result files report it ("overall", "attribute", "group"; a
    `between` metric is attribute-level only). `table`: its column position in the per-attribute tables (lower
    first; None: not a column). `compare`: `fairbench compare` tests it. `count`: stored as an integer, without a
    bootstrap interval. `required`: every result file of schema fairbench.result/1 has it (a metric added later
    reads as undefined from older files)."""

    name: str
    label: str
    description: str
    levels: tuple[str, ...] = ("attribute",)
    subset: Callable[[Stats], np.ndarray] | None = None
    between: Callable[[AttributeStats], np.ndarray] | None = None
    higher_is_better: bool | None = None  # None: no good direction (counts, selection rate)
    scale_100: bool = True  # printed × 100, as the papers print rates
    digits: int = 2
    count: bool = False
    table: int | None = None
    compare: bool = False
    required: bool = False

    def __post_init__(self) -> None:
        if (self.subset is None) == (self.between is None):
            raise ValueError(f"metric {self.name!r}: give exactly one of subset= or between=")
        if not self.levels or not set(self.levels) <= set(LEVELS):
            raise ValueError(f"metric {self.name!r}: levels must be some of {', '.join(LEVELS)}, got {self.levels}")
        if self.between is not None and self.levels != ("attribute",):
            raise ValueError(f"metric {self.name!r}: a between-groups metric is reported per attribute only")

    @property
    def arrow(self) -> str:
        """↑ / ↓ for tables; empty when the metric has no good direction."""
        if self.higher_is_better is None:
            return ""
        return "↑" if self.higher_is_better else "↓"

    @property
    def scale(self) -> float:
        return 100.0 if self.scale_100 else 1.0

    def display(self, value: float | None, digits: int | None = None) -> str:
        """One value as tables print it ('-' for undefined)."""
        if value is None or value != value:
            return "-"
        if self.count:
            return str(int(value))
        return f"{self.scale * value:.{self.digits if digits is None else digits}f}"


def register_metric(metric: Metric) -> Metric:
    """Make `metric` part of the suite: computed by `evaluate` and `bootstrap`, stored in result.json, shown by
    `fairbench metrics`, and, as it declares, a table column and a `compare` metric."""
    METRICS.load_builtins()  # the built-ins first: result files list metrics in registration order
    return METRICS.add(metric)


def get_metric(name: str) -> Metric:
    return METRICS.get(name)


def metrics_at(level: str) -> list[Metric]:
    """The metrics reported at `level`, in registration order."""
    return [m for m in METRICS.values() if level in m.levels]


def metric_names(level: str) -> tuple[str, ...]:
    return tuple(m.name for m in metrics_at(level))


def table_metrics() -> list[Metric]:
    """The per-attribute tables' columns, in their `table` order."""
    return sorted((m for m in METRICS.values() if m.table is not None), key=lambda m: m.table)


def compare_metrics() -> list[Metric]:
    """What `fairbench compare` tests, in registration order."""
    return [m for m in METRICS.values() if m.compare]


# ------------------------------------------------------------------ the built-in suite
# Definitions and sources: fairbench.metrics' package docstring. Registration order is result.json's key order.

_RATE = ("overall", "attribute", "group")
register_metric(Metric("n", "n", "rows", levels=("overall", "group"), subset=lambda s: s.n, scale_100=False,
                       count=True, required=True))
register_metric(Metric("positives", "pos", "rows with label 1", levels=("group",), subset=lambda s: s.positives,
                       scale_100=False, count=True, required=True))
register_metric(Metric("auc", "AUC", "ROC AUC of the scores (ties count 1/2)", levels=_RATE, subset=lambda s: s.auc,
                       higher_is_better=True, table=2, compare=True, required=True))
register_metric(Metric("accuracy", "Acc", "share of rows whose label is score ≥ threshold", levels=_RATE,
                       subset=lambda s: s.accuracy, higher_is_better=True, required=True))
register_metric(Metric("tpr", "TPR", "true-positive rate", levels=("group",), subset=lambda s: s.tpr,
                       higher_is_better=True, required=True))
register_metric(Metric("fpr", "FPR", "false-positive rate", levels=("group",), subset=lambda s: s.fpr,
                       higher_is_better=False, required=True))
register_metric(Metric("selection_rate", "Sel. rate", "share predicted positive", levels=("group",),
                       subset=lambda s: s.selection_rate, required=True))
register_metric(Metric("es_auc", "ES-AUC", "AUC / (1 + Σ_g |AUC − AUC_g|)",
                       between=lambda a: equity_scaled(a.rows.auc, a.groups.auc), higher_is_better=True, table=1,
                       compare=True, required=True))
register_metric(Metric("es_acc", "ES-Acc", "accuracy / (1 + Σ_g |accuracy − accuracy_g|)",
                       between=lambda a: equity_scaled(a.rows.accuracy, a.groups.accuracy), higher_is_better=True,
                       required=True))
register_metric(Metric("dpd", "DPD", "max − min group selection rate (fairlearn's demographic parity difference)",
                       between=lambda a: nan_range(a.groups.selection_rate), higher_is_better=False, table=3,
                       required=True))
register_metric(Metric("eod", "EOD", "max of the TPR and FPR gaps (fairlearn's equalized odds difference)",
                       between=lambda a: np.fmax(nan_range(a.groups.tpr), nan_range(a.groups.fpr)),
                       higher_is_better=False, table=4, required=True))
# Between-group AUC disparity, each divided by the attribute's AUC (FairCLIP's compute_between_group_disparity).
register_metric(Metric("group_auc_std", "AUC std", "population std of the group AUCs ÷ AUC",
                       between=lambda a: div(nan_std(a.groups.auc), a.rows.auc), higher_is_better=False,
                       required=True))
register_metric(Metric("group_auc_range", "AUC range", "max − min group AUC ÷ AUC",
                       between=lambda a: div(nan_range(a.groups.auc), a.rows.auc), higher_is_better=False,
                       required=True))

# Worst-group performance, calibration and underdiagnosis (issue 22; definitions and sources: the package docstring).
register_metric(Metric("worst_group_auc", "Worst AUC", "smallest group AUC (groups with both labels)",
                       between=lambda a: nan_min(a.groups.auc), higher_is_better=True, table=5))
register_metric(Metric("auc_gap", "AUC gap", "max − min group AUC",
                       between=lambda a: nan_range(a.groups.auc), higher_is_better=False))
register_metric(Metric("ece", "ECE", f"expected calibration error of P(label 1): {ECE_BINS} equal-width bins on [0, 1]",
                       levels=_RATE, subset=lambda s: s.ece, higher_is_better=False))
register_metric(Metric("ece_gap", "ECE gap", "max − min group ECE",
                       between=lambda a: nan_range(a.groups.ece), higher_is_better=False, table=6))
register_metric(Metric("brier", "Brier", "mean (score − label)²", levels=_RATE, subset=lambda s: s.brier,
                       higher_is_better=False, scale_100=False, digits=4))
register_metric(Metric("fnr", "FNR", "false-negative rate 1 − TPR (underdiagnosis)", levels=("group",),
                       subset=lambda s: s.fnr, higher_is_better=False))
register_metric(Metric("fnr_gap", "FNR gap", "max − min group FNR (underdiagnosis gap)",
                       between=lambda a: nan_range(a.groups.fnr), higher_is_better=False, table=7))
register_metric(Metric("tpr_gap", "TPR gap", "max − min group TPR: equalised odds' TPR part (equal opportunity "
                       "difference); the FNR gap up to float rounding", between=lambda a: nan_range(a.groups.tpr),
                       higher_is_better=False))
