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
from typing import TYPE_CHECKING

from fairbench.registry import SELECT_RULES

if TYPE_CHECKING:
    import numpy as np

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

    def __post_init__(self) -> None:
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
