"""What each metric means for display: its label, its good direction, and whether papers print it × 100.

Tables read this registry instead of hard-coding arrows, so a new metric needs one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    key: str
    label: str
    higher_is_better: bool | None  # None: no good direction (counts, selection rate)
    scale_100: bool  # printed × 100 in the papers' tables

    @property
    def arrow(self) -> str:
        """↑ / ↓ for tables; empty when the metric has no good direction."""
        if self.higher_is_better is None:
            return ""
        return "↑" if self.higher_is_better else "↓"

    def display(self, value: float | None, digits: int = 2) -> str:
        """Format one value the way the papers print it ('-' for undefined)."""
        if value is None or value != value:
            return "-"
        if not self.scale_100:
            return f"{value:g}" if isinstance(value, float) else str(value)
        return f"{100.0 * value:.{digits}f}"


def _m(key: str, label: str, higher: bool | None, scale: bool) -> tuple[str, MetricInfo]:
    return key, MetricInfo(key, label, higher, scale)


METRICS: dict[str, MetricInfo] = dict([
    # overall and per attribute
    _m("auc", "AUC", True, True),
    _m("accuracy", "Acc", True, True),
    _m("es_auc", "ES-AUC", True, True),
    _m("es_acc", "ES-Acc", True, True),
    _m("dpd", "DPD", False, True),
    _m("eod", "EOD", False, True),
    # between-group AUC disparity, each divided by the attribute's AUC (FairCLIP)
    _m("group_auc_std", "AUC std", False, True),
    _m("group_auc_range", "AUC range", False, True),
    # per group
    _m("n", "n", None, False),
    _m("positives", "pos", None, False),
    _m("tpr", "TPR", True, True),
    _m("fpr", "FPR", False, True),
    _m("selection_rate", "Sel. rate", None, True),
])

ATTRIBUTE_METRICS: tuple[str, ...] = (
    "auc", "accuracy", "es_auc", "es_acc", "dpd", "eod", "group_auc_std", "group_auc_range",
)
GROUP_METRICS: tuple[str, ...] = ("n", "positives", "auc", "accuracy", "tpr", "fpr", "selection_rate")
GROUP_RATE_METRICS: tuple[str, ...] = ("auc", "accuracy", "tpr", "fpr", "selection_rate")
