"""The worst-group, calibration and underdiagnosis metrics against independent references: sklearn and fairlearn
where they define the metric, fairmedfm 0.4.2 where its definition coincides (the differences named), a plain loop
otherwise; and their bootstrap replicates against a loop over the same resamples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    equal_opportunity_difference,
    false_negative_rate,
    false_negative_rate_difference,
)
from sklearn.metrics import brier_score_loss, roc_auc_score

from fairbench.metrics import MetricWarning, bootstrap, evaluate, resample_indices
from fairbench.metrics.kernel import ECE_BINS


def _case(seed: int, n: int = 400, groups: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and one attribute; every group has both labels."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    g[:2 * groups] = np.repeat(np.arange(groups), 2)
    y = rng.integers(0, 2, n)
    y[:2 * groups] = np.tile([0, 1], groups)
    p = np.clip(rng.normal(0.4 + 0.2 * y + 0.05 * g, 0.2), 0, 1)
    return y, p, g


def ece_loop(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Positive-class ECE, written out: bins (lo, hi] of width 1/bins on [0, 1], the first also holding 0."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i in range(len(p)) if (lo < p[i] <= hi) or (b == 0 and p[i] == 0.0)]
        if inside:
            total += len(inside) / len(p) * abs(np.mean(p[inside]) - np.mean(y[inside]))
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_worst_group_auc_and_gap_match_sklearn_per_group(seed: int) -> None:
    y, p, g = _case(seed)
    a = evaluate(y, p, {"site": g}).attributes["site"]
    aucs = [roc_auc_score(y[g == k], p[g == k]) for k in range(3)]
    assert a.worst_group_auc == pytest.approx(min(aucs), abs=1e-12)
    assert a.auc_gap == pytest.approx(max(aucs) - min(aucs), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fnr_and_gaps_match_fairlearn(seed: int) -> None:
    y, p, g = _case(seed)
    yhat = (p >= 0.5).astype(int)  # fairbench's decision rule: score ≥ threshold
    a = evaluate(y, p, {"site": g}).attributes["site"]
    frame = MetricFrame(metrics=false_negative_rate, y_true=y, y_pred=yhat, sensitive_features=g)
    for k in range(3):
        assert a.groups[str(k)].fnr == pytest.approx(frame.by_group[k], abs=1e-12)
    assert a.fnr_gap == pytest.approx(false_negative_rate_difference(y, yhat, sensitive_features=g), abs=1e-12)
    assert a.tpr_gap == pytest.approx(equal_opportunity_difference(y, yhat, sensitive_features=g), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_matches_sklearn(seed: int) -> None:
    y, p, g = _case(seed)
    suite = evaluate(y, p, {"site": g})
    assert suite.brier == pytest.approx(brier_score_loss(y, p), abs=1e-12)  # positional: sklearn renamed the arg
    for k in range(3):
        assert suite.attributes["site"].groups[str(k)].brier == pytest.approx(brier_score_loss(y[g == k], p[g == k]),
                                                                               abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_plain_loop(seed: int) -> None:
    y, p, g = _case(seed)
    p = np.round(p, 1)  # many scores exactly on a bin edge: the right-closed rule is what is tested
    suite = evaluate(y, p, {"site": g})
    assert suite.ece == pytest.approx(ece_loop(p, y), abs=1e-12)
    per_group = [ece_loop(p[g == k], y[g == k]) for k in range(3)]
    for k in range(3):
        assert suite.attributes["site"].groups[str(k)].ece == pytest.approx(per_group[k], abs=1e-12)
    assert suite.attributes["site"].ece_gap == pytest.approx(max(per_group) - min(per_group), abs=1e-12)


def test_ece_is_undefined_for_scores_that_are_not_probabilities() -> None:
    y, p, g = _case(0)
    suite = evaluate(y, p * 4 - 2, {"site": g})
    assert math.isnan(suite.ece) and math.isnan(suite.brier) and math.isnan(suite.attributes["site"].ece_gap)
    assert not math.isnan(suite.auc)


def test_group_without_positives_gets_nan_fnr_and_a_note() -> None:
    y, p, g = _case(0, n=200)
    y[g == 2] = 0  # group 2: negatives only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = evaluate(y, p, {"site": g}).attributes["site"]
    assert math.isnan(a.groups["2"].fnr) and math.isnan(a.groups["2"].auc)
    assert not math.isnan(a.groups["2"].ece)  # calibration needs no positives
    fnr = [a.groups[k].fnr for k in ("0", "1")]
    assert a.fnr_gap == pytest.approx(max(fnr) - min(fnr), abs=1e-12)  # the NaN group is left out, not a 0
    notes = [str(w.message) for w in caught if issubclass(w.category, MetricWarning)]
    assert any("'2'" in m and "FNR" in m and "worst-group AUC" in m for m in notes), notes


def test_new_metrics_get_bootstrap_intervals_matching_a_loop_over_resamples() -> None:
    y, p, g = _case(3, n=150)
    result = bootstrap(y, p, {"site": g}, n_resamples=25, seed=7)
    for i, idx in enumerate(resample_indices(len(y), 25, seed=7)):
        yy, pp, gg = y[idx], p[idx], g[idx]
        aucs = [roc_auc_score(yy[gg == k], pp[gg == k]) for k in range(3) if 0 < yy[gg == k].sum() < (gg == k).sum()]
        eces = [ece_loop(pp[gg == k], yy[gg == k]) for k in range(3)]
        assert result.samples[("site", "worst_group_auc")][i] == pytest.approx(min(aucs), abs=1e-12)
        assert result.samples[("site", "ece_gap")][i] == pytest.approx(max(eces) - min(eces), abs=1e-12)
        assert result.samples[("brier",)][i] == pytest.approx(brier_score_loss(yy, pp), abs=1e-12)
    for key in (("site", "worst_group_auc"), ("site", "fnr_gap"), ("site", "ece_gap"), ("ece",)):
        lo, hi = result.interval(*key)
        assert lo <= hi


# ------------------------------------------------------------------ fairmedfm 0.4.2, where definitions coincide
fm = pytest.importorskip("fairmedfm", reason="fairmedfm 0.4.2 (the test extra) is the FairMedFM reference")
# its submodule by name: `fm.metrics` exists only once another lazy attribute of the package has imported it
fm_metrics = pytest.importorskip("fairmedfm.metrics")


def test_auc_metrics_equal_fairmedfm() -> None:
    y, p, g = _case(4)
    a = evaluate(y, p, {"site": g}).attributes["site"]
    assert a.worst_group_auc == pytest.approx(fm.worst_group_auc(y, p, sensitive_features=g), abs=1e-12)
    assert a.auc_gap == pytest.approx(fm.auc_gap(y, p, sensitive_features=g), abs=1e-12)


def test_ece_equals_fairmedfm_when_each_group_spans_zero_to_one() -> None:
    """fairmedfm bins each group's scores over that group's own [min, max] (pandas.cut, 10 bins); fairbench over
    [0, 1]. With every group holding a score 0 and a score 1 the two binnings are the same, and so is the ECE."""
    y, p, g = _case(5)
    for k in range(3):
        first = np.flatnonzero(g == k)[:2]
        p[first] = (0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = fm.ece_gap(y, p, sensitive_features=g)
        overall = fm_metrics.expected_calibration_error(p, y)
    suite = evaluate(y, p, {"site": g})
    assert suite.attributes["site"].ece_gap == pytest.approx(expected, abs=1e-12)
    assert suite.ece == pytest.approx(overall, abs=1e-12)


def test_ece_differs_from_fairmedfm_when_a_group_spans_less() -> None:
    """The named difference: on scores within [0.5, 0.6] fairmedfm's data-range bins give mean |p − y|."""
    p = np.array([0.50, 0.52, 0.54, 0.56, 0.58, 0.60])
    y = np.array([0, 1, 0, 1, 1, 1])
    ours = evaluate(y, p, {}).ece
    assert ours == pytest.approx(ece_loop(p, y), abs=1e-12)
    assert fm_metrics.expected_calibration_error(p, y) == pytest.approx(np.abs(p - y).mean(), abs=1e-12)
    assert abs(ours - fm_metrics.expected_calibration_error(p, y)) > 0.1


def test_tpr_gap_equals_fairmedfm_eo_at_its_threshold_with_its_strict_rule() -> None:
    """fairmedfm's `eo` is the TPR gap at a best-F1 threshold t* fitted on the scored samples, with score > t*.
    fairbench never fits a threshold on test labels; given the same threshold and rule (≥ nextafter(t*)), the gap
    is the same number."""
    y, p, g = _case(6)
    t_star = fm_metrics.find_threshold(p, y)
    ours = evaluate(y, p, {"site": g}, threshold=float(np.nextafter(t_star, np.inf))).attributes["site"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours.tpr_gap == pytest.approx(fm.equal_opportunity_difference(y, p, sensitive_features=g), abs=1e-12)
