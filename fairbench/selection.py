"""Model-selection rules: which epoch of a run is the one it reports (`--select NAME`, the trainer's `select`).

A rule reads one split's zero-shot scores after every epoch and turns them into a key; the epoch with the
highest key wins (ties by the trainer's `ties` setting). `val` (the default) reads validation data only; `test`
is the papers' rule, reading the test split, which makes it optimistic, and every table says so. A rule is a
registered object like every named kind (`register_select_rule`), so a fairness-aware rule computed on
validation data is one registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fairbench.registry import SELECT_RULES

DEFAULT_RULE = "val"
SPLITS = ("val", "test")


@dataclass(frozen=True)
class EpochView:
    """One split's scores after an epoch, as a rule reads them: 0/1 labels, scores, the training attribute's group
    codes (None for a method that trains on no attribute) and the AUC the trainer computed."""

    split: str
    labels: np.ndarray
    scores: np.ndarray
    groups: np.ndarray | None
    auc: float
    attributes: dict[str, np.ndarray] | None = None  # every attribute's codes of the split, where the trainer has them


def by_auc(view: EpochView) -> float:
    return view.auc


@dataclass(frozen=True)
class SelectRule:
    """`split` is the data the rule reads each epoch ("val" or "test"); `key` the number the best epoch
    maximises; `label` how tables and result.json name the rule; `optimistic` marks a rule that lets the test
    data choose the epoch."""

    name: str
    description: str
    label: str
    split: str = "val"
    key: Callable[[EpochView], float] = by_auc
    optimistic: bool = False
    # A rule over all epochs at once (MEDFAIR's DTO normalises by the best value over the candidates): `point` gives
    # an epoch's coordinates, `over_epochs` turns the (E, D) points of every epoch so far into E keys (higher wins).
    point: Callable[[EpochView], tuple[float, ...]] | None = None
    over_epochs: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if (self.point is None) != (self.over_epochs is None):
            raise ValueError(f"selection rule {self.name!r}: give both point= and over_epochs=, or neither")
        if self.split not in SPLITS:
            raise ValueError(f"selection rule {self.name!r}: split must be one of {', '.join(SPLITS)}, "
                             f"got {self.split!r}")


def register_select_rule(rule: SelectRule) -> SelectRule:
    """Make `rule` available as `--select NAME` (and as the trainer setting `select`)."""
    return SELECT_RULES.add(rule)


def get_select_rule(name: str) -> SelectRule:
    """The rule called `name`; an UnknownNameError (one line, listing the rules) otherwise."""
    return SELECT_RULES.get(name)


def select_rule_names() -> list[str]:
    return SELECT_RULES.names()


def selection_label(name: str) -> str:
    """How tables name a rule; a result written under a rule no longer registered keeps its name."""
    return get_select_rule(name).label if name in SELECT_RULES else f"selection rule {name!r}"


register_select_rule(SelectRule(
    "val", "the epoch with the best validation AUC (the default; test data is scored once, at the end)",
    label="best validation AUC"))
register_select_rule(SelectRule(
    "test", "the epoch with the best TEST AUC: the papers' released rule, optimistic (test data chose the epoch)",
    label="best TEST AUC (papers' rule; optimistic)", split="test", optimistic=True))


def worst_group_auc(view: EpochView) -> float:
    """The smallest group AUC (groups with both labels) over the training attribute's groups, or, for a run that
    trains on no attribute, over every attribute's groups the split has; NaN when no group AUC is defined."""
    import warnings

    from fairbench.metrics.suite import evaluate

    if view.groups is not None:
        attributes = {"train": view.groups}
    else:
        attributes = dict(view.attributes or {})
    if not attributes:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an undefined group AUC is left out, as the metric does
        suite = evaluate(view.labels, view.scores, attributes)
    values = [a.worst_group_auc for a in suite.attributes.values()]
    values = [v for v in values if v == v]
    return min(values) if values else float("nan")


def distance_to_optimal(points: np.ndarray) -> np.ndarray:
    """MEDFAIR's DTO (ys-zong/MEDFAIR notebooks/results_analysis.ipynb, `DTO` and `l2norm`, commit 2fae424): each
    column is divided by its best value over the candidates (the utopia point becomes all ones) and a candidate's
    distance is ‖normalised − 1‖₂. Returned as −distance (higher wins); a candidate with an undefined (NaN) or
    non-positive column is −inf. MEDFAIR's columns are the per-subgroup validation AUCs; here they are the
    (validation AUC, worst-group validation AUC) of each epoch, as the issue defines the rule."""
    points = np.asarray(points, dtype=float)
    ok = np.isfinite(points).all(axis=1) & (points > 0).all(axis=1)
    if not ok.any():
        return np.full(len(points), -np.inf)
    utopia = points[ok].max(axis=0)
    distance = np.sqrt(((points / utopia - 1.0) ** 2).sum(axis=1))
    return np.where(ok, -distance, -np.inf)


register_select_rule(SelectRule(
    "dto", "the epoch closest to the best (validation AUC, worst-group validation AUC) over the epochs, each axis "
    "divided by its best value (MEDFAIR's distance to optimal; validation data only)",
    label="DTO on validation (AUC, worst-group AUC)",
    point=lambda view: (view.auc, worst_group_auc(view)), over_epochs=distance_to_optimal))
