"""`evaluate`: the metric suite as named results, plus its JSON form that result files store."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairbench.metrics.info import ATTRIBUTE_METRICS, GROUP_RATE_METRICS
from fairbench.metrics.inputs import (
    EncodedAttribute,
    MetricInputError,
    check_labels,
    check_scores,
    encode_attribute,
)
from fairbench.metrics.kernel import Key, Layout, build_layout, suite_arrays


class MetricWarning(UserWarning):
    """A metric is undefined (NaN) or rows were excluded; the message says which and why."""


@dataclass(frozen=True)
class GroupMetrics:
    code: int | str
    n: int
    positives: int
    auc: float
    accuracy: float
    tpr: float
    fpr: float
    selection_rate: float


@dataclass(frozen=True)
class AttributeMetrics:
    auc: float
    accuracy: float
    es_auc: float
    es_acc: float
    dpd: float
    eod: float
    group_auc_std: float
    group_auc_range: float
    groups: dict[str, GroupMetrics] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Rows with a known value of this attribute."""
        return sum(g.n for g in self.groups.values())


@dataclass(frozen=True)
class MetricSuite:
    n: int
    threshold: float
    auc: float
    accuracy: float
    attributes: dict[str, AttributeMetrics] = field(default_factory=dict)

    def n_excluded(self, attribute: str) -> int:
        """Rows left out of `attribute`'s metrics because their value was unknown."""
        return self.n - self.attributes[attribute].n

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (NaN → None); the shape result.json stores."""
        return {
            "n": int(self.n), "threshold": float(self.threshold),
            "auc": _json_float(self.auc), "accuracy": _json_float(self.accuracy),
            "attributes": {
                name: {
                    **{k: _json_float(getattr(a, k)) for k in ATTRIBUTE_METRICS},
                    "groups": {
                        gname: {"code": g.code, "n": int(g.n), "positives": int(g.positives),
                                **{k: _json_float(getattr(g, k)) for k in GROUP_RATE_METRICS}}
                        for gname, g in a.groups.items()
                    },
                }
                for name, a in self.attributes.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricSuite:
        """Inverse of to_dict (None → NaN); a missing key is a KeyError naming it."""
        try:
            attributes = {
                name: AttributeMetrics(
                    **{k: _from_json(a[k]) for k in ATTRIBUTE_METRICS},
                    groups={
                        gname: GroupMetrics(code=g["code"], n=int(g["n"]), positives=int(g["positives"]),
                                            **{k: _from_json(g[k]) for k in GROUP_RATE_METRICS})
                        for gname, g in a["groups"].items()
                    },
                )
                for name, a in data["attributes"].items()
            }
            return cls(n=int(data["n"]), threshold=float(data["threshold"]), auc=_from_json(data["auc"]),
                       accuracy=_from_json(data["accuracy"]), attributes=attributes)
        except KeyError as exc:
            raise KeyError(f"metric suite dict lacks key {exc.args[0]!r}") from None


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _from_json(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class Problem:
    """Checked inputs of one evaluation: labels, scores, encoded attributes and the kernel layout."""

    labels: np.ndarray
    scores: np.ndarray
    attributes: tuple[EncodedAttribute, ...]
    threshold: float
    layout: Layout

    @property
    def n(self) -> int:
        return len(self.labels)


def prepare(labels: Any, scores: Any, attributes: Mapping[str, Any], *, threshold: float = 0.5,
            group_names: Mapping[str, Mapping[int, str]] | None = None,
            score_name: str = "scores") -> Problem:
    """Check and encode inputs once, so evaluation and bootstrap see the same groups."""
    y = check_labels(labels)
    s = check_scores(scores, len(y), name=score_name)
    if not math.isfinite(threshold):
        raise MetricInputError(f"threshold must be finite, got {threshold}", field="threshold")
    names = dict(group_names or {})
    enc = tuple(encode_attribute(a, v, len(y), names.get(a)) for a, v in attributes.items())
    return Problem(y, s, enc, float(threshold), build_layout(y, s, threshold, enc))


def suite_from_flat(problem: Problem, flat: Mapping[Key, np.ndarray], row: int = 0) -> MetricSuite:
    """Assemble one MetricSuite from row `row` of the kernel's (B,) arrays."""
    def v(*key: str) -> float:
        return float(flat[key][row])

    attrs = {}
    for enc in problem.attributes:
        a = enc.name
        groups = {
            name: GroupMetrics(code=code, n=round(v(a, "groups", name, "n")),
                               positives=round(v(a, "groups", name, "positives")),
                               **{k: v(a, "groups", name, k) for k in GROUP_RATE_METRICS})
            for code, name in zip(enc.codes, enc.names, strict=True)
        }
        attrs[a] = AttributeMetrics(**{k: v(a, k) for k in ATTRIBUTE_METRICS}, groups=groups)
    return MetricSuite(n=round(v("n")), threshold=problem.threshold, auc=v("auc"), accuracy=v("accuracy"),
                       attributes=attrs)


def evaluate(labels: Any, scores: Any, attributes: Mapping[str, Any], *, threshold: float = 0.5,
             group_names: Mapping[str, Mapping[int, str]] | None = None) -> MetricSuite:
    """The full suite (overall, per attribute, per group); see the package docstring for edge cases."""
    problem = prepare(labels, scores, attributes, threshold=threshold, group_names=group_names)
    suite = point_estimate(problem)
    warn_undefined(suite, stacklevel=2)
    return suite


def overall_auc(labels: Any, scores: Any) -> float:
    """The AUC over every row, as the suite computes it (NaN, with its warning, when the labels have one class): the
    number epochs are selected by, during fine-tuning and pretraining alike."""
    return float(evaluate(labels, scores, {}).auc)


def point_estimate(problem: Problem) -> MetricSuite:
    """The suite on the full sample set (unit weights), without warnings."""
    return suite_from_flat(problem, suite_arrays(problem.layout, np.ones((1, problem.n))))


def warn_undefined(suite: MetricSuite, stacklevel: int = 2) -> None:
    """Emit undefined_warnings as MetricWarnings; stacklevel is relative to the function calling this."""
    for message in undefined_warnings(suite):
        warnings.warn(message, MetricWarning, stacklevel=stacklevel + 1)


def undefined_warnings(suite: MetricSuite) -> list[str]:
    """One line per excluded-rows or undefined-metric situation in a computed suite."""
    out = []
    if math.isnan(suite.auc):
        out.append(f"all {suite.n} labels are one class: overall AUC is undefined (NaN), "
                   "and so are every ES-AUC and AUC disparity")
    for attr, a in suite.attributes.items():
        excluded = suite.n_excluded(attr)
        if excluded:
            out.append(f"attribute {attr!r}: {excluded} of {suite.n} rows have an unknown value (-1 or "
                       "missing) and are excluded from its metrics")
        for gname, g in a.groups.items():
            if g.positives in (0, g.n):
                cls = "positive" if g.positives else "negative"
                rate = "FPR" if g.positives else "TPR"
                out.append(f"{attr} group {gname!r} (n={g.n}) has only {cls} labels: its AUC and {rate} "
                           f"are undefined (NaN) and left out of {attr}'s ES-AUC, AUC disparity and EOD")
    return out
