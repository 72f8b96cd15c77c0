"""The metric suite against scikit-learn, fairlearn, hand-computed numbers and the decided edge cases."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from fairlearn.metrics import (
    demographic_parity_difference,
    equalized_odds_difference,
)
from sklearn.metrics import accuracy_score, roc_auc_score

from fairbench.metrics import (
    MetricInputError,
    MetricSuite,
    MetricWarning,
    evaluate,
    get_metric,
    metric_names,
)
from fairbench.metrics.reference import reference_suite


def _random_case(seed: int, n: int, probs: list[float], ties: bool) -> tuple[np.ndarray, ...]:
    """Labels, scores and one attribute where every group has both classes (so references agree)."""
    rng = np.random.default_rng(seed)
    g = rng.choice(len(probs), size=n, p=probs)
    g[: 2 * len(probs)] = np.repeat(np.arange(len(probs)), 2)
    y = rng.integers(0, 2, size=n)
    y[: 2 * len(probs)] = np.tile([0, 1], len(probs))
    s = np.clip(rng.normal(0.45 + 0.15 * y + 0.05 * g, 0.2), 0, 1)
    if ties:
        s = np.round(s, 1)  # many tied scores, within and across classes
    return y, s, g


CASES = [
    (seed, n, probs, ties)
    for seed, (n, probs) in enumerate([
        (60, [0.5, 0.5]),
        (300, [0.1, 0.2, 0.7]),
        (500, [0.9, 0.05, 0.05]),
        (250, [0.2, 0.2, 0.2, 0.2, 0.2]),
        (1000, [0.6, 0.4]),
        (400, [0.03, 0.47, 0.5]),
    ])
    for ties in (False, True)
]


@pytest.mark.parametrize(("seed", "n", "probs", "ties"), CASES)
def test_matches_sklearn_and_fairlearn(seed: int, n: int, probs: list[float], ties: bool) -> None:
    y, s, g = _random_case(seed, n, probs, ties)
    threshold = 0.5
    yhat = (s >= threshold).astype(int)
    suite = evaluate(y, s, {"site": g}, threshold=threshold, group_names={"site": {}})
    a = suite.attributes["site"]

    ref = reference_suite(y, s, {"site": g}, threshold)
    auc, acc, site = ref["auc"], ref["accuracy"], ref["site"]
    assert auc == roc_auc_score(y, s) and acc == accuracy_score(y, yhat)
    assert suite.auc == pytest.approx(auc, abs=1e-12)
    assert suite.accuracy == pytest.approx(acc, abs=1e-12)
    assert a.auc == pytest.approx(auc, abs=1e-12)
    assert a.dpd == pytest.approx(demographic_parity_difference(y, yhat, sensitive_features=g), abs=1e-12)
    assert a.eod == pytest.approx(equalized_odds_difference(y, yhat, sensitive_features=g), abs=1e-12)

    by_group = site["groups"]
    assert list(a.groups) == [str(c) for c in range(len(probs))]
    for name, gm in a.groups.items():
        ref_group = by_group.loc[int(name)]
        assert gm.code == int(name)
        assert gm.n == ref_group["n"]
        assert gm.positives == int(y[g == int(name)].sum())
        for k in ("accuracy", "tpr", "fpr", "selection_rate"):
            assert getattr(gm, k) == pytest.approx(ref_group[k], abs=1e-12), k
        assert gm.auc == pytest.approx(site["group_auc"][int(name)], abs=1e-12)
    for k in ("es_auc", "es_acc", "group_auc_std", "group_auc_range"):
        assert getattr(a, k) == pytest.approx(site[k], abs=1e-12), k


def test_other_thresholds_match_fairlearn() -> None:
    y, s, g = _random_case(7, 400, [0.3, 0.3, 0.4], ties=True)
    for t in (0.3, 0.5, 0.61):
        yhat = (s >= t).astype(int)
        a = evaluate(y, s, {"race": g}, threshold=t).attributes["race"]
        assert a.accuracy == pytest.approx(accuracy_score(y, yhat))
        assert a.dpd == pytest.approx(demographic_parity_difference(y, yhat, sensitive_features=g))
        assert a.eod == pytest.approx(equalized_odds_difference(y, yhat, sensitive_features=g))


# Hand-worked fixture: 8 samples, 2 groups, threshold 0.5.
#   group 0: y = 0 0 1 1, s = .1 .6 .4 .8 → ŷ = 0 1 0 1
#   group 1: y = 0 1 1 0, s = .3 .7 .2 .3 → ŷ = 0 1 0 0
HAND_Y = [0, 0, 1, 1, 0, 1, 1, 0]
HAND_S = [0.1, 0.6, 0.4, 0.8, 0.3, 0.7, 0.2, 0.3]
HAND_G = [0, 0, 0, 0, 1, 1, 1, 1]
# Group names are the caller's (a dataset's `attributes`); these are FairVLMed's codes.
NAMES = {"race": {0: "Asian", 1: "Black", 2: "White"}, "gender": {0: "Female", 1: "Male"},
         "language": {0: "English", 1: "Spanish", 2: "Other"}}


def test_hand_computed_fixture() -> None:
    suite = evaluate(HAND_Y, HAND_S, {"gender": HAND_G}, group_names=NAMES)
    a = suite.attributes["gender"]
    # AUC: positive/negative pairs won — .4 beats 3, .8 beats 4, .7 beats 4, .2 beats 1 → 12 / 16
    assert suite.auc == pytest.approx(0.75)
    assert suite.accuracy == pytest.approx(5 / 8)
    f, m = a.groups["Female"], a.groups["Male"]
    assert (f.code, f.n, f.positives, m.code, m.n, m.positives) == (0, 4, 2, 1, 4, 2)
    assert f.auc == pytest.approx(3 / 4)  # .4 beats .1; .8 beats .1 and .6
    assert m.auc == pytest.approx(2 / 4)  # .7 beats both .3; .2 beats none
    assert (f.accuracy, m.accuracy) == pytest.approx((0.5, 0.75))
    assert (f.tpr, m.tpr) == pytest.approx((0.5, 0.5))
    assert (f.fpr, m.fpr) == pytest.approx((0.5, 0.0))
    assert (f.selection_rate, m.selection_rate) == pytest.approx((0.5, 0.25))
    assert a.es_auc == pytest.approx(0.75 / (1 + 0.0 + 0.25))  # = 0.6
    assert a.es_acc == pytest.approx(0.625 / (1 + 0.125 + 0.125))  # = 0.5
    assert a.dpd == pytest.approx(0.25)
    assert a.eod == pytest.approx(0.5)  # TPR gap 0, FPR gap 0.5
    assert a.group_auc_std == pytest.approx(0.125 / 0.75)  # std(.75, .5) = .125
    assert a.group_auc_range == pytest.approx(0.25 / 0.75)


def test_ties_count_half() -> None:
    # positive .5 ties the negative .5 (½) and beats .2 (1); positive .9 beats both (2) → 3.5 / 4
    assert evaluate([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], {}).auc == pytest.approx(0.875)


def test_group_names_strings_and_codes_agree() -> None:
    names = np.array(["Asian", "black", "ASIAN", "Black", " White ", "White", "white", "White"])
    codes = np.array([0, 1, 0, 1, 2, 2, 2, 2])
    a = evaluate(HAND_Y, HAND_S, {"race": names}, group_names=NAMES).to_dict()
    b = evaluate(HAND_Y, HAND_S, {"race": codes}, group_names=NAMES).to_dict()
    assert a == b
    assert list(a["attributes"]["race"]["groups"]) == ["Asian", "Black", "White"]
    assert a["attributes"]["race"]["groups"]["White"]["code"] == 2


def test_custom_group_names_and_unnamed_codes() -> None:
    g = [0, 0, 0, 0, 7, 7, 7, 7]
    suite = evaluate(HAND_Y, HAND_S, {"site": g, "race": g}, group_names={"site": {0: "Boston"}})
    assert list(suite.attributes["site"].groups) == ["Boston", "7"]
    assert list(suite.attributes["race"].groups) == ["0", "7"]  # no dataset's names are assumed
    free = evaluate(HAND_Y, HAND_S, {"site": ["north"] * 4 + ["south"] * 4})
    codes = {k: v.code for k, v in free.attributes["site"].groups.items()}
    assert codes == {"north": "north", "south": "south"}


def test_to_dict_shape_and_roundtrip() -> None:
    y, s, g = _random_case(3, 200, [0.2, 0.3, 0.5], ties=False)
    suite = evaluate(y, s, {"race": g, "gender": (s > 0.4).astype(int)})
    d = suite.to_dict()
    json.dumps(d, allow_nan=False)
    assert set(d) == {"n", "threshold", "auc", "accuracy", "ece", "brier", "attributes"}
    assert isinstance(d["n"], int) and d["n"] == 200 and d["threshold"] == 0.5
    for a in d["attributes"].values():
        assert set(a) == set(metric_names("attribute")) | {"groups"}
        for gd in a["groups"].values():
            assert set(gd) == {"code", "n", "positives", "auc", "accuracy", "tpr", "fpr", "selection_rate", "ece",
                               "brier", "fnr"}
            assert isinstance(gd["n"], int) and isinstance(gd["positives"], int)
    assert MetricSuite.from_dict(d) == suite
    assert MetricSuite.from_dict(json.loads(json.dumps(d))).to_dict() == d


def test_nan_becomes_none_in_json_and_back() -> None:
    with pytest.warns(MetricWarning):
        suite = evaluate([0, 1, 0, 0], [0.2, 0.7, 0.4, 0.1], {"race": [0, 0, 1, 1]}, group_names=NAMES)
    d = suite.to_dict()
    assert d["attributes"]["race"]["groups"]["Black"]["auc"] is None
    json.dumps(d, allow_nan=False)
    back = MetricSuite.from_dict(d)
    assert math.isnan(back.attributes["race"].groups["Black"].auc)
    with pytest.raises(KeyError, match="'auc'"):
        MetricSuite.from_dict({k: v for k, v in d.items() if k != "auc"})


def test_registry_directions() -> None:
    assert all(get_metric(k).higher_is_better for k in ("auc", "accuracy", "es_auc", "es_acc"))
    assert not any(get_metric(k).higher_is_better for k in ("dpd", "eod", "group_auc_std", "group_auc_range"))
    assert get_metric("es_auc").arrow == "↑" and get_metric("dpd").arrow == "↓"
    assert get_metric("selection_rate").arrow == ""
    assert get_metric("auc").display(0.71234) == "71.23" and get_metric("auc").display(float("nan")) == "-"
    assert metric_names("attribute") == ("auc", "accuracy", "es_auc", "es_acc", "dpd", "eod", "group_auc_std",
                                         "group_auc_range", "worst_group_auc", "auc_gap", "ece", "ece_gap", "brier",
                                         "fnr_gap", "tpr_gap")


# ---- edge cases ------------------------------------------------------------------------------------------

def test_single_class_group_is_nan_and_skipped_in_es_auc() -> None:
    y = np.array([0, 1, 0, 1, 0, 1, 0, 0, 0])
    s = np.array([0.2, 0.9, 0.6, 0.4, 0.1, 0.8, 0.7, 0.3, 0.55])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])  # group 2 has negatives only
    with pytest.warns(MetricWarning, match=r"group 'Other' \(n=2\) has only negative labels"):
        a = evaluate(y, s, {"language": g}, group_names=NAMES).attributes["language"]
    other = a.groups["Other"]
    assert math.isnan(other.auc) and math.isnan(other.tpr)
    assert other.fpr == pytest.approx(0.5) and other.accuracy == pytest.approx(0.5)
    auc = roc_auc_score(y, s)
    defined = [roc_auc_score(y[g == k], s[g == k]) for k in (0, 1)]
    assert a.es_auc == pytest.approx(auc / (1 + sum(abs(auc - x) for x in defined)))
    assert a.group_auc_std == pytest.approx(np.std(defined) / auc)
    assert a.group_auc_range == pytest.approx(abs(defined[0] - defined[1]) / auc)
    yhat = s >= 0.5
    tpr = [yhat[(g == k) & (y == 1)].mean() for k in (0, 1)]
    fpr = [yhat[(g == k) & (y == 0)].mean() for k in (0, 1, 2)]
    assert a.eod == pytest.approx(max(max(tpr) - min(tpr), max(fpr) - min(fpr)))


def test_group_of_size_one() -> None:
    with pytest.warns(MetricWarning, match="n=1"):
        a = evaluate(HAND_Y + [1], HAND_S + [0.9], {"race": HAND_G + [2]}, group_names=NAMES).attributes["race"]
    white = a.groups["White"]
    assert (white.n, white.positives, white.accuracy, white.tpr) == (1, 1, 1.0, 1.0)
    assert white.selection_rate == 1.0
    assert math.isnan(white.auc) and math.isnan(white.fpr)


def test_no_group_auc_defined_gives_nan_es_auc() -> None:
    with pytest.warns(MetricWarning):
        a = evaluate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8], {"race": [0, 0, 1, 1]}).attributes["race"]
    assert a.auc == pytest.approx(0.75)
    assert math.isnan(a.es_auc) and math.isnan(a.group_auc_std) and math.isnan(a.group_auc_range)
    assert a.dpd == pytest.approx(0.0)  # each group selects one of two


def test_all_scores_equal() -> None:
    y, _, g = _random_case(1, 100, [0.5, 0.5], ties=False)
    suite = evaluate(y, np.full(100, 0.3), {"gender": g})
    a = suite.attributes["gender"]
    assert suite.auc == 0.5 and all(x.auc == 0.5 for x in a.groups.values())
    assert a.es_auc == 0.5 and a.dpd == 0.0 and a.eod == 0.0
    assert suite.accuracy == pytest.approx(1 - y.mean())


def test_single_class_overall() -> None:
    with pytest.warns(MetricWarning) as record:
        suite = evaluate([0, 0, 0, 0], [0.2, 0.7, 0.6, 0.1], {"gender": [0, 1, 0, 1]})
    messages = [str(w.message) for w in record]
    assert any("overall AUC is undefined" in m for m in messages)
    assert sum("only negative labels" in m for m in messages) == 2
    a = suite.attributes["gender"]
    assert math.isnan(suite.auc) and math.isnan(a.es_auc) and math.isnan(a.group_auc_std)
    assert suite.accuracy == 0.5 and a.dpd == 0.0
    assert a.eod == pytest.approx(0.0)  # FPR 0.5 in both groups; TPR undefined everywhere


def test_unknown_codes_are_excluded_with_warning() -> None:
    y = HAND_Y + [1, 0]
    s = HAND_S + [0.05, 0.95]  # two badly scored rows with unknown language
    with pytest.warns(MetricWarning, match="'language': 2 of 10 rows have an unknown value"):
        suite = evaluate(y, s, {"language": HAND_G + [-1, -1], "race": HAND_G + [0, 1]})
    lang = suite.attributes["language"]
    assert suite.n == 10 and suite.n_excluded("language") == 2 and suite.n_excluded("race") == 0
    assert suite.auc == pytest.approx(roc_auc_score(y, s))
    assert lang.auc == pytest.approx(0.75) and lang.accuracy == pytest.approx(5 / 8)  # the 8 known rows
    assert lang.es_auc == pytest.approx(0.6) and lang.n == 8
    assert suite.attributes["race"].auc == pytest.approx(suite.auc)
    # missing strings and NaN codes count as unknown too
    with pytest.warns(MetricWarning, match="2 of 10"):
        names = evaluate(y, s, {"language": ["English"] * 4 + ["Spanish"] * 4 + ["", None]})
    assert names.attributes["language"].es_auc == pytest.approx(0.6)
    with pytest.warns(MetricWarning, match="2 of 10"):
        floats = evaluate(y, s, {"language": [float(x) for x in HAND_G] + [math.nan, -1.0]})
    assert floats.attributes["language"].auc == pytest.approx(0.75)


def test_no_warning_on_clean_input() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(HAND_Y, HAND_S, {"gender": HAND_G})


@pytest.mark.parametrize(("labels", "scores", "attrs", "match"), [
    ([0, 1, 1], [0.1, float("nan"), 0.3], {}, r"scores\[1\] = nan"),
    ([0, 1, 1], [0.1, float("inf"), 0.3], {}, r"scores\[1\] = inf"),
    ([0, 2, 1], [0.1, 0.2, 0.3], {}, r"labels\[1\] = 2"),
    ([0, 0.5, 1], [0.1, 0.2, 0.3], {}, r"labels\[1\] = 0.5"),
    ([0, float("nan"), 1], [0.1, 0.2, 0.3], {}, r"labels\[1\]"),
    (["no", "yes"], [0.1, 0.2], {}, "labels must be numeric"),
    ([0, 1, 1], [0.1, 0.2], {}, "scores has 2 entries but labels has 3"),
    ([0, 1, 1], [0.1, 0.2, 0.3], {"race": [0, 1]}, "attribute 'race' has 2 entries but labels has 3"),
    ([0, 1, 1], [0.1, 0.2, 0.3], {"race": [0, -2, 1]}, r"race\[1\] = -2: group codes must be >= 0, or -1"),
    ([0, 1, 1], [0.1, 0.2, 0.3], {"race": [0, 1.5, 1]}, "must be integers"),
    ([], [], {}, "empty"),
    ([[0, 1]], [[0.1, 0.2]], {}, "1-D"),
])
def test_bad_input_errors(labels, scores, attrs, match: str) -> None:
    with pytest.raises(MetricInputError, match=match):
        evaluate(labels, scores, attrs)


def test_error_carries_row() -> None:
    with pytest.raises(MetricInputError) as info:
        evaluate([0, 1, 1, 0], [0.1, 0.2, 0.3, float("nan")], {})
    assert (info.value.field, info.value.row) == ("scores", 3)
