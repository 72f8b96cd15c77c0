"""The numeric core: the statistics every metric of the suite is computed from, for a batch of sample-weight
vectors at once (the metrics themselves are registered in catalog.py).

A bootstrap resample is the original sample set with integer multiplicities, so the suite of B
resamples is the suite of B weight vectors over the *original* rows. That lets the scores be sorted
once: AUC is the weighted Mann–Whitney statistic over tie blocks (ties count 1/2, exactly like
sklearn's `roc_auc_score`), and counts are one matrix product. `evaluate` is the case B = 1 with
unit weights, so point estimates and bootstrap replicates share one code path.

A "segment" is a row subset: all rows, the known-value rows of one attribute, or one group.

Memory is bounded whatever the number of rows: the AUC works through blocks of (weight vectors × segments) of at
most `_CHUNK_ELEMENTS` elements, and the segment masks are stored as booleans. With integer weights (unit weights,
bootstrap multiplicities) every sum the kernel forms is of integers or half-integers below 2**53, so it is exact in
any order: how the work is blocked never changes a number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairbench.metrics.inputs import EncodedAttribute

Key = tuple[str, ...]

# Calibration bins of the ECE: equal width over [0, 1] of the score p = P(label 1), right-closed ((lo, hi], the first
# bin also holding 0), the edges np.linspace(0, 1, ECE_BINS + 1) as pandas.cut makes them.
ECE_BINS = 10

# Elements of one (weight vectors, segments, N) float64 work array of the AUC: about six such arrays live at once,
# so the AUC's working memory stays near 6 × 8 × this = 96 MB however many rows there are.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class Stats:
    """Weighted statistics of row subsets, each array (B, S) (or (B,) for one subset): rows, positives,
    predicted positives (score ≥ threshold), true positives, and the AUC. `row_sum(values)` is the weighted sum of
    any per-row quantity over each subset (`values` in the order of `scores`/`labels`, sorted by score), for
    metrics the counts cannot give (e.g. calibration)."""

    n: np.ndarray
    positives: np.ndarray
    predicted: np.ndarray
    true_positives: np.ndarray
    auc: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    row_sum: Callable[[np.ndarray], np.ndarray]
    calibration: np.ndarray  # (B, S, ECE_BINS): Σ w (p − y) over the subset's rows in each bin; NaN: not probabilities
    squared_error: np.ndarray  # (B, S): Σ w (p − y)²

    @property
    def ece(self) -> np.ndarray:
        """Σ_bins |Σ_bin w (p − y)| / Σ w = Σ_bins (n_bin / n) · |mean p − share positive| (positive-class ECE)."""
        return div(np.abs(self.calibration).sum(axis=-1), self.n)

    @property
    def brier(self) -> np.ndarray:
        return div(self.squared_error, self.n)

    @property
    def fnr(self) -> np.ndarray:
        return div(self.positives - self.true_positives, self.positives)

    @property
    def negatives(self) -> np.ndarray:
        return self.n - self.positives

    @property
    def false_positives(self) -> np.ndarray:
        return self.predicted - self.true_positives

    @property
    def accuracy(self) -> np.ndarray:
        return div(self.true_positives + self.negatives - self.false_positives, self.n)

    @property
    def selection_rate(self) -> np.ndarray:
        return div(self.predicted, self.n)

    @property
    def tpr(self) -> np.ndarray:
        return div(self.true_positives, self.positives)

    @property
    def fpr(self) -> np.ndarray:
        return div(self.false_positives, self.negatives)

    def take(self, index: Any) -> Stats:
        """The subsets `index` picks (an int: one subset, arrays become (B,); an array: (B, len(index)))."""
        full = self.row_sum
        return Stats(self.n[:, index], self.positives[:, index], self.predicted[:, index],
                     self.true_positives[:, index], self.auc[:, index], self.scores, self.labels,
                     lambda values: full(values)[:, index], self.calibration[:, index],
                     self.squared_error[:, index])


@dataclass(frozen=True)
class AttributeStats:
    """One attribute: `rows` (its known-value rows, arrays (B,)) and `groups` (arrays (B, G))."""

    rows: Stats
    groups: Stats


@dataclass(frozen=True)
class AttributeLayout:
    name: str
    segment: int  # segment of this attribute's known-value rows
    group_segments: np.ndarray  # (G,) segment index per group
    group_names: tuple[str, ...]


@dataclass(frozen=True)
class CalibrationSegment:
    """One segment's rows (sorted order), where each non-empty ECE bin starts among them and which bin it is, and
    each row's residual p − y and its square."""

    rows: np.ndarray
    starts: np.ndarray
    bins: np.ndarray
    residual: np.ndarray
    squared: np.ndarray


@dataclass(frozen=True)
class Layout:
    """Everything about one (labels, scores, attributes) problem that does not depend on weights."""

    order: np.ndarray  # permutation sorting scores ascending; weights are permuted by it
    starts: np.ndarray | None  # first sorted position of each tie block; None when all distinct
    pos_masks: np.ndarray  # (S, N) bool: segment ∧ label 1, sorted order
    neg_masks: np.ndarray  # (S, N) bool: segment ∧ label 0, sorted order
    features: np.ndarray  # (N, 4S) sorted order: [segment, segment∧y, segment∧ŷ, segment∧y∧ŷ]
    attributes: tuple[AttributeLayout, ...]
    scores: np.ndarray  # (N,) sorted ascending
    labels: np.ndarray  # (N,) 0/1 as floats, in the scores' order
    calibration: tuple[CalibrationSegment, ...] = ()  # one per segment
    probabilities: bool = True  # every score lies in [0, 1]: calibration is defined (ECE; Brier)

    @property
    def n_segments(self) -> int:
        return self.pos_masks.shape[0]


def build_layout(labels: np.ndarray, scores: np.ndarray, threshold: float,
                 attributes: Sequence[EncodedAttribute]) -> Layout:
    order = np.argsort(scores, kind="stable")
    s_sorted = scores[order]
    y = labels[order].astype(np.float64)
    yhat = (s_sorted >= threshold).astype(np.float64)
    change = np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1
    starts = None if change.size == len(s_sorted) - 1 else np.concatenate(([0], change))

    masks = [np.ones(len(y))]
    attr_layouts = []
    for enc in attributes:
        index = enc.index[order]
        if enc.n_excluded:
            masks.append((index >= 0).astype(np.float64))
            seg = len(masks) - 1
        else:
            seg = 0  # same rows as the whole set: reuse its segment
        first = len(masks)
        masks.extend((index == g).astype(np.float64) for g in range(len(enc.codes)))
        attr_layouts.append(AttributeLayout(enc.name, seg, np.arange(first, len(masks)), enc.names))
    m = np.stack(masks)
    s = len(masks)
    features = np.empty((len(y), 4 * s))  # filled block by block: no (4S, N) temporary beside it
    for block, factor in enumerate((None, y, yhat, y * yhat)):
        features[:, block * s:(block + 1) * s] = (m if factor is None else m * factor).T
    residual = s_sorted - y
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.clip(np.searchsorted(edges, s_sorted, side="left") - 1, 0, ECE_BINS - 1)
    calibration = []
    for row in m > 0:  # scores are sorted, so each segment's rows run through the bins in order: one block per bin
        rows = np.flatnonzero(row)
        first = np.flatnonzero(np.r_[True, bins[rows][1:] != bins[rows][:-1]]) if rows.size else rows
        calibration.append(CalibrationSegment(rows, first, bins[rows][first], residual[rows], residual[rows] ** 2))
    in_segment, positive = m > 0, y > 0
    return Layout(order=order, starts=starts, pos_masks=in_segment & positive, neg_masks=in_segment & ~positive,
                  features=features, attributes=tuple(attr_layouts), scores=s_sorted, labels=y,
                  calibration=tuple(calibration),
                  probabilities=bool(len(y) == 0 or (s_sorted[0] >= 0.0 and s_sorted[-1] <= 1.0)))


def div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (an undefined rate, never a silent 0)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _weighted_auc(layout: Layout, w: np.ndarray, segments: slice = slice(None)) -> np.ndarray:
    """(b, N) sorted-order weights → (b, S') AUC per segment of `segments`; NaN where a segment lacks a class."""
    pw = w[:, None, :] * layout.pos_masks[None, segments]
    nw = w[:, None, :] * layout.neg_masks[None, segments]
    if layout.starts is not None:  # collapse tied scores into blocks so ties count 1/2
        pw = np.add.reduceat(pw, layout.starts, axis=2)
        nw = np.add.reduceat(nw, layout.starts, axis=2)
    cum_neg = np.cumsum(nw, axis=2)
    # Each positive beats the negatives strictly below its block and ties half of those in it.
    num = np.einsum("bsu,bsu->bs", pw, cum_neg - 0.5 * nw)
    return div(num, pw.sum(axis=2) * cum_neg[..., -1])


def segment_stats(layout: Layout, weights: np.ndarray) -> Stats:
    """(B, N) weights in original row order → weighted counts and AUC per segment, each (B, S)."""
    w = np.ascontiguousarray(weights[:, layout.order], dtype=np.float64)
    s, n = layout.n_segments, w.shape[1]
    counts = w @ layout.features
    rows = max(1, _CHUNK_ELEMENTS // (s * n))  # weight vectors per block, all segments at once
    step = s if rows > 1 else max(1, _CHUNK_ELEMENTS // n)  # else one vector, segments in groups
    auc = np.empty((len(w), s))
    for i in range(0, len(w), rows):
        for j in range(0, s, step):
            auc[i:i + rows, j:j + step] = _weighted_auc(layout, w[i:i + rows], slice(j, j + step))
    masks = layout.features[:, :s]  # (N, S) sorted order: row i belongs to segment j

    def row_sum(values: np.ndarray) -> np.ndarray:
        return w @ (masks * np.asarray(values, dtype=np.float64)[:, None])

    calibration, squared_error = _calibration_sums(layout, w)
    if not layout.probabilities:  # calibration is a property of probabilities: undefined for other scores
        calibration, squared_error = np.full_like(calibration, np.nan), np.full_like(squared_error, np.nan)
    return Stats(n=counts[:, :s], positives=counts[:, s:2 * s], predicted=counts[:, 2 * s:3 * s],
                 true_positives=counts[:, 3 * s:], auc=auc, scores=layout.scores, labels=layout.labels,
                 row_sum=row_sum, calibration=calibration, squared_error=squared_error)


def _calibration_sums(layout: Layout, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(b, S, ECE_BINS) Σ w (p − y) per segment and bin, and (b, S) Σ w (p − y)². The sums are of non-integers, so
    they are formed row by row (a contiguous reduction per bin block and per segment), in an order that does not
    depend on how many weight vectors a block holds: a matrix product's summation order could."""
    b = len(w)
    calibration = np.zeros((b, len(layout.calibration), ECE_BINS))
    squared = np.zeros((b, len(layout.calibration)))
    for j, seg in enumerate(layout.calibration):
        if not seg.rows.size:
            continue
        ws = w[:, seg.rows]
        calibration[:, j, seg.bins] = np.add.reduceat(ws * seg.residual, seg.starts, axis=1)
        squared[:, j] = (ws * seg.squared).sum(axis=1)
    return calibration, squared


def nan_range(x: np.ndarray) -> np.ndarray:
    """max − min over the defined (non-NaN) entries of each row; NaN when none is defined."""
    ok = ~np.isnan(x)
    hi = np.where(ok, x, -np.inf).max(axis=1)
    lo = np.where(ok, x, np.inf).min(axis=1)
    return np.where(ok.any(axis=1), hi - lo, np.nan)


def nan_min(x: np.ndarray) -> np.ndarray:
    """min over the defined (non-NaN) entries of each row; NaN when none is defined."""
    ok = ~np.isnan(x)
    return np.where(ok.any(axis=1), np.where(ok, x, np.inf).min(axis=1), np.nan)


def nan_std(x: np.ndarray) -> np.ndarray:
    """Population std (ddof 0, as np.std in FairCLIP) over the defined entries of each row."""
    ok = ~np.isnan(x)
    cnt = ok.sum(axis=1)
    mean = div(np.where(ok, x, 0.0).sum(axis=1), cnt)
    var = div(np.where(ok, (x - mean[:, None]) ** 2, 0.0).sum(axis=1), cnt)
    return np.sqrt(var)


def equity_scaled(overall: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """overall / (1 + Σ_g |overall − group_g|), summing only defined groups; NaN if none is."""
    ok = ~np.isnan(groups)
    dev = np.where(ok, np.abs(groups - overall[:, None]), 0.0).sum(axis=1)
    return np.where(ok.any(axis=1), overall / (1.0 + dev), np.nan)
