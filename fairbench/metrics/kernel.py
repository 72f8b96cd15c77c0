"""The numeric core: every metric of the suite for a batch of sample-weight vectors at once.

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairbench.metrics.inputs import EncodedAttribute

Key = tuple[str, ...]

# Elements of one (weight vectors, segments, N) float64 work array of the AUC: about six such arrays live at once,
# so the AUC's working memory stays near 6 × 8 × this = 96 MB however many rows there are.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class AttributeLayout:
    name: str
    segment: int  # segment of this attribute's known-value rows
    group_segments: np.ndarray  # (G,) segment index per group
    group_names: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """Everything about one (labels, scores, attributes) problem that does not depend on weights."""

    order: np.ndarray  # permutation sorting scores ascending; weights are permuted by it
    starts: np.ndarray | None  # first sorted position of each tie block; None when all distinct
    pos_masks: np.ndarray  # (S, N) bool: segment ∧ label 1, sorted order
    neg_masks: np.ndarray  # (S, N) bool: segment ∧ label 0, sorted order
    features: np.ndarray  # (N, 4S) sorted order: [segment, segment∧y, segment∧ŷ, segment∧y∧ŷ]
    attributes: tuple[AttributeLayout, ...]

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
    in_segment, positive = m > 0, y > 0
    return Layout(order=order, starts=starts, pos_masks=in_segment & positive, neg_masks=in_segment & ~positive,
                  features=features, attributes=tuple(attr_layouts))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
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
    return _div(num, pw.sum(axis=2) * cum_neg[..., -1])


def segment_stats(layout: Layout, weights: np.ndarray) -> dict[str, np.ndarray]:
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
    return {"n": counts[:, :s], "pos": counts[:, s:2 * s], "pred": counts[:, 2 * s:3 * s],
            "tp": counts[:, 3 * s:], "auc": auc}


def _nan_range(x: np.ndarray) -> np.ndarray:
    """max − min over the defined (non-NaN) entries of each row; NaN when none is defined."""
    ok = ~np.isnan(x)
    hi = np.where(ok, x, -np.inf).max(axis=1)
    lo = np.where(ok, x, np.inf).min(axis=1)
    return np.where(ok.any(axis=1), hi - lo, np.nan)


def _nan_std(x: np.ndarray) -> np.ndarray:
    """Population std (ddof 0, as np.std in FairCLIP) over the defined entries of each row."""
    ok = ~np.isnan(x)
    cnt = ok.sum(axis=1)
    mean = _div(np.where(ok, x, 0.0).sum(axis=1), cnt)
    var = _div(np.where(ok, (x - mean[:, None]) ** 2, 0.0).sum(axis=1), cnt)
    return np.sqrt(var)


def _equity_scaled(overall: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """overall / (1 + Σ_g |overall − group_g|), summing only defined groups; NaN if none is."""
    ok = ~np.isnan(groups)
    dev = np.where(ok, np.abs(groups - overall[:, None]), 0.0).sum(axis=1)
    return np.where(ok.any(axis=1), overall / (1.0 + dev), np.nan)


def derive(layout: Layout, stats: dict[str, np.ndarray]) -> dict[Key, np.ndarray]:
    """Every scalar of the suite, keyed like MetricSuite.to_dict paths, each a (B,) array."""
    n, pos, pred, tp, auc = stats["n"], stats["pos"], stats["pred"], stats["tp"], stats["auc"]
    neg = n - pos
    fp = pred - tp
    acc = _div(tp + neg - fp, n)
    sel = _div(pred, n)
    tpr = _div(tp, pos)
    fpr = _div(fp, neg)
    out: dict[Key, np.ndarray] = {("n",): n[:, 0], ("auc",): auc[:, 0], ("accuracy",): acc[:, 0]}
    for a in layout.attributes:
        seg, gs = a.segment, a.group_segments
        a_auc, g_auc = auc[:, seg], auc[:, gs]
        out[(a.name, "auc")] = a_auc
        out[(a.name, "accuracy")] = acc[:, seg]
        out[(a.name, "es_auc")] = _equity_scaled(a_auc, g_auc)
        out[(a.name, "es_acc")] = _equity_scaled(acc[:, seg], acc[:, gs])
        out[(a.name, "dpd")] = _nan_range(sel[:, gs])
        out[(a.name, "eod")] = np.fmax(_nan_range(tpr[:, gs]), _nan_range(fpr[:, gs]))
        out[(a.name, "group_auc_std")] = _div(_nan_std(g_auc), a_auc)
        out[(a.name, "group_auc_range")] = _div(_nan_range(g_auc), a_auc)
        for j, (g, name) in enumerate(zip(gs, a.group_names, strict=True)):
            base = (a.name, "groups", name)
            out[base + ("n",)] = n[:, g]
            out[base + ("positives",)] = pos[:, g]
            out[base + ("auc",)] = g_auc[:, j]
            out[base + ("accuracy",)] = acc[:, g]
            out[base + ("tpr",)] = tpr[:, g]
            out[base + ("fpr",)] = fpr[:, g]
            out[base + ("selection_rate",)] = sel[:, g]
    return out


def suite_arrays(layout: Layout, weights: np.ndarray) -> dict[Key, np.ndarray]:
    """The whole suite for each row of `weights` (B, N)."""
    return derive(layout, segment_stats(layout, weights))
