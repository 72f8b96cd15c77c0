"""`evaluate`: the metric suite as named results, plus its JSON form that result files store."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairbench.metrics.catalog import Metric, metrics_at
from fairbench.metrics.inputs import (
    EncodedAttribute,
    MetricInputError,
    check_labels,
    check_scores,
    encode_attribute,
)
from fairbench.metrics.kernel import AttributeStats, Key, Layout, build_layout, segment_stats


class MetricWarning(UserWarning):
    """A metric is undefined (NaN) or rows were excluded; the message says which and why."""


class _Values:
    """Metric values read as attributes (`suite.auc`, `group.tpr`): the registered metrics decide which exist."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "values":
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no metric {name!r}") from None


@dataclass(frozen=True)
class GroupMetrics(_Values):
    """One group of one attribute: its code and its group-level metrics (counts as ints)."""

    code: int | str
    values: dict[str, Any]


@dataclass(frozen=True)
class AttributeMetrics(_Values):
    """One attribute: its attribute-level metrics and its groups."""

    values: dict[str, Any]
    groups: dict[str, GroupMetrics] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Rows with a known value of this attribute."""
        return sum(g.n for g in self.groups.values())


@dataclass(frozen=True)
class MetricSuite(_Values):
    """The suite of one evaluation: the overall metrics (`n` among them), the threshold, and each attribute's."""

    threshold: float
    values: dict[str, Any]
    attributes: dict[str, AttributeMetrics] = field(default_factory=dict)

    def n_excluded(self, attribute: str) -> int:
        """Rows left out of `attribute`'s metrics because their value was unknown."""
        return self.n - self.attributes[attribute].n

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (NaN → None); the shape result.json stores: `n` and `threshold` first, then the
        overall metrics, then per attribute its metrics and its groups (`code` first), each in registration order."""
        return {
            "n": int(self.n), "threshold": float(self.threshold),
            **{k: _json(v) for k, v in self.values.items() if k != "n"},
            "attributes": {
                name: {
                    **{k: _json(v) for k, v in a.values.items()},
                    "groups": {gname: {"code": g.code, **{k: _json(v) for k, v in g.values.items()}}
                               for gname, g in a.groups.items()},
                }
                for name, a in self.attributes.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricSuite:
        """Inverse of to_dict (None → NaN). A metric every result file has (`Metric.required`) that is missing is a
        KeyError naming it; one added later reads as NaN from an older file."""
        try:
            attributes = {
                name: AttributeMetrics(
                    _read(a, metrics_at("attribute")),
                    groups={gname: GroupMetrics(g["code"], _read(g, metrics_at("group")))
                            for gname, g in a["groups"].items()},
                )
                for name, a in data["attributes"].items()
            }
            return cls(threshold=float(data["threshold"]), values=_read(data, metrics_at("overall")),
                       attributes=attributes)
        except KeyError as exc:
            raise KeyError(f"metric suite dict lacks key {exc.args[0]!r}") from None


def _read(block: Mapping[str, Any], metrics: list[Metric]) -> dict[str, Any]:
    out = {}
    for m in metrics:
        if m.name not in block and not m.required:
            out[m.name] = math.nan
            continue
        raw = block[m.name]
        out[m.name] = int(raw) if m.count else _from_json(raw)
    return out


def _json(x: Any) -> Any:
    return x if isinstance(x, int) else _json_float(x)


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


def suite_arrays(layout: Layout, weights: np.ndarray) -> dict[Key, np.ndarray]:
    """Every registered metric for each row of `weights` (B, N), keyed like MetricSuite.to_dict paths, each (B,):
    ("auc",), (attribute, "es_auc"), (attribute, "groups", group, "tpr"). Each metric is computed once per level,
    over all its subsets at once."""
    stats = segment_stats(layout, weights)
    out: dict[Key, np.ndarray] = {}
    for m in metrics_at("overall"):
        out[(m.name,)] = m.subset(stats)[:, 0]
    group_metrics = metrics_at("group")
    for a in layout.attributes:
        rows, groups = stats.take(a.segment), stats.take(a.group_segments)
        for m in metrics_at("attribute"):
            out[(a.name, m.name)] = m.subset(rows) if m.subset is not None else m.between(AttributeStats(rows, groups))
        per_group = {m.name: m.subset(groups) for m in group_metrics}
        for j, name in enumerate(a.group_names):
            for m in group_metrics:
                out[(a.name, "groups", name, m.name)] = per_group[m.name][:, j]
    return out


def suite_from_flat(problem: Problem, flat: Mapping[Key, np.ndarray], row: int = 0) -> MetricSuite:
    """Assemble one MetricSuite from row `row` of `suite_arrays`' (B,) arrays (counts rounded to ints)."""
    def values(metrics: list[Metric], *prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in metrics:
            v = float(flat[(*prefix, m.name)][row])
            out[m.name] = round(v) if m.count else v
        return out

    group_metrics = metrics_at("group")
    attrs = {}
    for enc in problem.attributes:
        a = enc.name
        groups = {name: GroupMetrics(code, values(group_metrics, a, "groups", name))
                  for code, name in zip(enc.codes, enc.names, strict=True)}
        attrs[a] = AttributeMetrics(values(metrics_at("attribute"), a), groups=groups)
    return MetricSuite(threshold=problem.threshold, values=values(metrics_at("overall")), attributes=attrs)


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
                rate = "FPR" if g.positives else "TPR and FNR"
                gaps = "EOD" if g.positives else "EOD and FNR/TPR gaps"
                out.append(f"{attr} group {gname!r} (n={g.n}) has only {cls} labels: its AUC and {rate} "
                           f"are undefined (NaN) and left out of {attr}'s ES-AUC, worst-group AUC, AUC gap and "
                           f"disparity, {gaps}")
    return out
