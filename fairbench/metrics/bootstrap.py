"""Bootstrap confidence intervals for the suite, and the paired bootstrap for comparing two methods.

Resamples are drawn over test samples (rows) as index matrices, turned into row multiplicities and scored
in batched kernel calls (see kernel.py), a block of resamples at a time: the draws come from one generator in
order, so they are exactly those of one (B, n) draw (`resample_indices`), and the block size keeps the working
memory under `MEMORY_CEILING_BYTES` (with about 100 MB for the AUC's work arrays, kernel.py) whatever n and B are.
A million rows with 200 resamples needs a few hundred MB, not the 7 GB of drawing all resamples at once.
Intervals are percentile intervals over the resamples where the metric is defined (a resample can, rarely, drop
every positive of a small group; that replicate is skipped for that metric only).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairbench.metrics.catalog import get_metric
from fairbench.metrics.kernel import Key
from fairbench.metrics.suite import (
    MetricSuite,
    point_estimate,
    prepare,
    suite_arrays,
    suite_from_flat,
    warn_undefined,
)

# The resampling's own working memory: a block's indices (int64), their counts (int64), the weights (float64)
# and the kernel's sorted copy of them (float64): 32 bytes per (resample, row).
MEMORY_CEILING_BYTES = 128 * 2**20
_BYTES_PER_CELL = 32


def resample_indices(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """(B, n) row indices drawn with replacement; the exact draws `bootstrap(seed=...)` uses (in blocks)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def block_size(n: int, ceiling: int | None = None) -> int:
    """Resamples per block so that one block's arrays fit in `ceiling` bytes (default MEMORY_CEILING_BYTES; at
    least one resample)."""
    return max(1, (MEMORY_CEILING_BYTES if ceiling is None else ceiling) // (_BYTES_PER_CELL * max(n, 1)))


def _weight_blocks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """(b, n) float row multiplicities, block after block, of the resamples `resample_indices` draws at once."""
    rng = np.random.default_rng(seed)
    rows = block_size(n)
    for start in range(0, n_resamples, rows):
        yield _multiplicities(rng.integers(0, n, size=(min(rows, n_resamples - start), n)))


def _multiplicities(idx: np.ndarray) -> np.ndarray:
    """(B, n) indices → (B, n) float counts of each row in each resample, via one bincount."""
    b, n = idx.shape
    idx += np.arange(b)[:, None] * n  # in place: the indices are ours
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _replicates(layouts: list[Any], n: int, n_resamples: int, seed: int) -> list[dict[Key, np.ndarray]]:
    """The suite of every resample for each layout (same resamples for all), block by block."""
    parts: list[list[dict[Key, np.ndarray]]] = [[] for _ in layouts]
    for weights in _weight_blocks(n, n_resamples, seed):
        for layout, out in zip(layouts, parts, strict=True):
            out.append(suite_arrays(layout, weights))
        del weights
    return [{k: np.concatenate([p[k] for p in blocks]) for k in blocks[0]} for blocks in parts]


def _check(n_resamples: int, ci: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), e.g. 0.95; got {ci}")


def _percentile_interval(x: np.ndarray, ci: float) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(x, [50.0 * (1.0 - ci), 50.0 * (1.0 + ci)])
    return (float(lo), float(hi))


def _nest(values: Mapping[Key, Any]) -> dict[str, Any]:
    """{("sex", "es_auc"): v, ("auc",): w} → {"auc": w, "attributes": {"sex": {"es_auc": v}}}."""
    out: dict[str, Any] = {}
    for key, v in values.items():
        node = out if len(key) == 1 else out.setdefault("attributes", {})
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = v
    return out


def _json(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimate, per-metric bootstrap replicates and percentile intervals."""

    point: MetricSuite
    samples: dict[Key, np.ndarray]  # key as in to_dict paths, e.g. ("sex", "es_auc"); (B,) each
    n_resamples: int
    seed: int
    ci: float

    def interval(self, *key: str) -> tuple[float, float]:
        """Percentile CI of one metric, e.g. interval("sex", "groups", "F", "auc")."""
        return _percentile_interval(self.samples[tuple(key)], self.ci)

    def intervals(self) -> dict[Key, tuple[float, float]]:
        return {k: self.interval(*k) for k in self.samples}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {n_resamples, seed, ci, auc: [lo, hi], ..., attributes: {...same nesting...}}."""
        nested = _nest({k: [_json(lo), _json(hi)] for k, (lo, hi) in self.intervals().items()})
        return {"n_resamples": self.n_resamples, "seed": self.seed, "ci": self.ci, **nested}


def bootstrap(labels: Any, scores: Any, attributes: Mapping[str, Any], *, n_resamples: int = 1000,
              seed: int = 0, ci: float = 0.95, threshold: float = 0.5,
              group_names: Mapping[str, Mapping[int, str]] | None = None) -> BootstrapResult:
    """Percentile bootstrap CIs for every scalar metric of the suite (resampling test rows)."""
    _check(n_resamples, ci)
    problem = prepare(labels, scores, attributes, threshold=threshold, group_names=group_names)
    point = point_estimate(problem)
    warn_undefined(point, stacklevel=2)
    (flat,) = _replicates([problem.layout], problem.n, n_resamples, seed)
    samples = {k: v for k, v in flat.items() if not get_metric(k[-1]).count}  # counts get no interval
    return BootstrapResult(point, samples, n_resamples, seed, ci)


@dataclass(frozen=True)
class Difference:
    """Method A minus method B for one metric on the same test set."""

    estimate: float
    low: float
    high: float
    p_value: float  # two-sided, H0: no difference; (1 + #replicates on the far side of 0) / (1 + B), × 2


@dataclass(frozen=True)
class PairedBootstrapResult:
    point_a: MetricSuite
    point_b: MetricSuite
    estimates: dict[Key, float]  # a − b on the full test set
    samples: dict[Key, np.ndarray]  # (B,) replicates of a − b, same resamples for both methods
    n_resamples: int
    seed: int
    ci: float

    def difference(self, *key: str) -> Difference:
        """E.g. difference("sex", "es_auc"): CI and p-value of ES-AUC(A) − ES-AUC(B)."""
        k = tuple(key)
        d = self.samples[k]
        d = d[~np.isnan(d)]
        lo, hi = _percentile_interval(d, self.ci)
        if d.size == 0:
            p = math.nan
        else:
            tail = min(np.count_nonzero(d <= 0.0), np.count_nonzero(d >= 0.0))
            p = min(1.0, 2.0 * (1.0 + tail) / (1.0 + d.size))
        return Difference(self.estimates[k], lo, hi, p)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per metric {estimate, low, high, p_value}, nested like MetricSuite.to_dict."""
        body = {}
        for k in self.samples:
            d = self.difference(*k)
            body[k] = {"estimate": _json(d.estimate), "low": _json(d.low), "high": _json(d.high),
                       "p_value": _json(d.p_value)}
        return {"n_resamples": self.n_resamples, "seed": self.seed, "ci": self.ci, **_nest(body)}


def paired_bootstrap(labels: Any, scores_a: Any, scores_b: Any, attributes: Mapping[str, Any], *,
                     n_resamples: int = 1000, seed: int = 0, ci: float = 0.95, threshold: float = 0.5,
                     group_names: Mapping[str, Mapping[int, str]] | None = None) -> PairedBootstrapResult:
    """Bootstrap of metric(A) − metric(B) with both methods scored on the same resampled rows.

    Pairing removes the test-set sampling noise the two methods share, so the interval of the
    difference is much tighter than comparing two independent CIs.
    """
    _check(n_resamples, ci)
    pa = prepare(labels, scores_a, attributes, threshold=threshold, group_names=group_names,
                 score_name="scores_a")
    pb = prepare(labels, scores_b, attributes, threshold=threshold, group_names=group_names,
                 score_name="scores_b")
    ones = np.ones((1, pa.n))
    flat_a, flat_b = suite_arrays(pa.layout, ones), suite_arrays(pb.layout, ones)
    rep_a, rep_b = _replicates([pa.layout, pb.layout], pa.n, n_resamples, seed)
    keys = [k for k in rep_a if not get_metric(k[-1]).count]
    point_a, point_b = suite_from_flat(pa, flat_a), suite_from_flat(pb, flat_b)
    warn_undefined(point_a, stacklevel=2)
    return PairedBootstrapResult(
        point_a=point_a, point_b=point_b,
        estimates={k: float(flat_a[k][0] - flat_b[k][0]) for k in keys},
        samples={k: rep_a[k] - rep_b[k] for k in keys},
        n_resamples=n_resamples, seed=seed, ci=ci)
