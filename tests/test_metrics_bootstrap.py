"""Bootstrap and paired bootstrap: determinism, coverage of the point estimate, and a slow loop reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fairbench.metrics import MetricWarning, bootstrap, evaluate, paired_bootstrap, resample_indices


def _data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    race = rng.choice(3, n, p=[0.2, 0.3, 0.5])
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y + 0.03 * race, 0.2), 0, 1), 2)  # with ties
    return y, s, {"race": race, "gender": rng.integers(0, 2, n)}


def _flatten(d: dict, prefix: tuple = ()) -> dict[tuple, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        elif k not in ("code", "threshold"):
            out[prefix + (k,)] = v
    return out


def test_replicates_match_a_slow_loop_over_resamples() -> None:
    y, s, attrs = _data(300, seed=1)
    res = bootstrap(y, s, attrs, n_resamples=5, seed=3)
    idx = resample_indices(len(y), 5, seed=3)
    for b in range(5):
        ref = evaluate(y[idx[b]], s[idx[b]], {k: v[idx[b]] for k, v in attrs.items()}).to_dict()
        flat = _flatten(ref)
        flat = {(k[1:] if k[0] == "attributes" else k): v for k, v in flat.items()}
        checked = 0
        for key, samples in res.samples.items():
            assert samples[b] == pytest.approx(flat[key], abs=1e-12), key
            checked += 1
        assert checked == len([k for k in flat if k[-1] not in ("n", "positives")])


def test_deterministic_with_seed() -> None:
    y, s, attrs = _data()
    a = bootstrap(y, s, attrs, n_resamples=50, seed=7)
    b = bootstrap(y, s, attrs, n_resamples=50, seed=7)
    c = bootstrap(y, s, attrs, n_resamples=50, seed=8)
    assert all(np.array_equal(a.samples[k], b.samples[k]) for k in a.samples)
    assert a.to_dict() == b.to_dict()
    assert not np.array_equal(a.samples[("auc",)], c.samples[("auc",)])


def test_interval_contains_point_estimate_and_is_ordered() -> None:
    y, s, attrs = _data(800, seed=2)
    res = bootstrap(y, s, attrs, n_resamples=400, seed=0)
    point = res.point
    assert point == evaluate(y, s, attrs)
    lo, hi = res.interval("auc")
    assert lo < point.auc < hi and hi - lo < 0.15
    for attr, a in point.attributes.items():
        for k in ("auc", "accuracy", "es_auc", "es_acc"):
            lo, hi = res.interval(attr, k)
            assert lo <= getattr(a, k) <= hi, (attr, k)
        for gname, g in a.groups.items():
            lo, hi = res.interval(attr, "groups", gname, "auc")
            assert lo <= g.auc <= hi, (attr, gname)
    assert all(lo <= hi for lo, hi in res.intervals().values())
    narrow = bootstrap(y, s, attrs, n_resamples=400, seed=0, ci=0.5).interval("auc")
    assert res.interval("auc")[0] < narrow[0] < narrow[1] < res.interval("auc")[1]


def test_to_dict_nests_like_the_suite() -> None:
    y, s, attrs = _data(200)
    d = bootstrap(y, s, attrs, n_resamples=20).to_dict()
    json.dumps(d, allow_nan=False)
    assert (d["n_resamples"], d["seed"], d["ci"]) == (20, 0, 0.95)
    assert len(d["auc"]) == 2
    assert set(d["attributes"]["race"]) >= {"es_auc", "dpd", "eod", "groups"}
    black = d["attributes"]["race"]["groups"]["1"]  # no group names given: named by code
    assert set(black) == {"auc", "accuracy", "tpr", "fpr", "selection_rate", "ece", "brier", "fnr"}


def test_resample_missing_a_group_gives_nan_for_that_replicate_only() -> None:
    y = np.array([0, 1] * 20 + [1])
    s = np.linspace(0, 1, 41)
    g = np.array([0] * 40 + [1])  # one-row group: absent from most resamples
    with pytest.warns(MetricWarning, match="n=1"):
        res = bootstrap(y, s, {"race": g}, n_resamples=30, seed=0)
    tiny = res.samples[("race", "groups", "1", "selection_rate")]
    assert np.isnan(tiny).any() and not np.isnan(tiny).all()
    assert not np.isnan(res.samples[("race", "es_acc")]).any()


def test_paired_identical_methods_have_zero_difference() -> None:
    y, s, attrs = _data(300)
    res = paired_bootstrap(y, s, s.copy(), attrs, n_resamples=50)
    d = res.difference("race", "es_auc")
    assert (d.estimate, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_matches_two_unpaired_runs_with_the_same_seed() -> None:
    y, s, attrs = _data(300)
    s2 = np.clip(s + np.random.default_rng(5).normal(0, 0.1, len(s)), 0, 1)
    paired = paired_bootstrap(y, s, s2, attrs, n_resamples=40, seed=4)
    a = bootstrap(y, s, attrs, n_resamples=40, seed=4)
    b = bootstrap(y, s2, attrs, n_resamples=40, seed=4)
    for key in (("auc",), ("race", "es_auc"), ("gender", "eod")):
        np.testing.assert_array_equal(paired.samples[key], a.samples[key] - b.samples[key])
    assert paired.estimates[("race", "es_auc")] == pytest.approx(a.point.attributes["race"].es_auc
                                                                 - b.point.attributes["race"].es_auc)
    assert paired.point_a == a.point and paired.point_b == b.point


def test_paired_detects_a_clearly_better_method() -> None:
    y, s, attrs = _data(600)
    noisy = np.clip(s + np.random.default_rng(9).normal(0, 0.4, len(s)), 0, 1)
    res = paired_bootstrap(y, s, noisy, attrs, n_resamples=300, seed=0)
    d = res.difference("auc")
    assert d.estimate > 0 and d.low > 0 and d.p_value < 0.01
    body = res.to_dict()
    json.dumps(body, allow_nan=False)
    assert set(body["attributes"]["race"]["es_auc"]) == {"estimate", "low", "high", "p_value"}
    assert body["auc"]["p_value"] == pytest.approx(d.p_value)


def test_bad_arguments() -> None:
    y, s, attrs = _data(50)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap(y, s, attrs, n_resamples=0)
    with pytest.raises(ValueError, match="ci must be in"):
        bootstrap(y, s, attrs, ci=95)
    with pytest.raises(ValueError, match="scores_b has 49 entries but labels has 50"):
        paired_bootstrap(y, s, s[:-1], attrs)


def test_nan_interval_when_never_defined() -> None:
    with pytest.warns(MetricWarning, match="overall AUC is undefined"):
        res = bootstrap([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], {}, n_resamples=10)
    assert all(math.isnan(x) for x in res.interval("auc"))
    assert res.to_dict()["auc"] == [None, None]


def test_blocked_resampling_is_bit_identical_to_drawing_all_resamples_at_once(monkeypatch) -> None:
    """The blocks (a few resamples at a time, the AUC a few segments at a time) change no number: compared with
    one (B, n) draw scored in one kernel call, as the bootstrap did before it worked in blocks."""
    import sys

    from fairbench.metrics import kernel
    from fairbench.metrics.suite import prepare, suite_arrays

    boot_mod = sys.modules["fairbench.metrics.bootstrap"]

    y, s, attrs = _data(500, seed=4)
    attrs["language"] = np.random.default_rng(4).choice([0, 1, 2, -1], 500)  # a known-rows segment too
    whole = prepare(y, s, attrs)
    monkeypatch.setattr(kernel, "_CHUNK_ELEMENTS", 10**12)
    at_once = suite_arrays(whole.layout, boot_mod._multiplicities(resample_indices(500, 37, seed=9)))
    monkeypatch.setattr(boot_mod, "MEMORY_CEILING_BYTES", 32 * 500 * 5)  # blocks of 5 resamples (the last: 2)
    monkeypatch.setattr(kernel, "_CHUNK_ELEMENTS", 3 * 500)  # one resample and three segments at a time
    with pytest.warns(MetricWarning):
        blocked = bootstrap(y, s, attrs, n_resamples=37, seed=9)
        paired = paired_bootstrap(y, s, s[::-1].copy(), attrs, n_resamples=37, seed=9)
    for key, values in blocked.samples.items():
        assert np.array_equal(values, at_once[key], equal_nan=True), key
    ones = suite_arrays(whole.layout, np.ones((1, 500)))
    assert paired.estimates[("auc",)] == ones[("auc",)][0] - evaluate(y, s[::-1].copy(), attrs).auc


@pytest.mark.slow  # several fp16/fp64 steps or a 1e6-row bootstrap: seconds, not the quick loop's budget
def test_memory_does_not_grow_with_the_number_of_resamples(monkeypatch) -> None:
    """Resamples are drawn and scored in blocks under MEMORY_CEILING_BYTES: 8× the resamples, the same peak.
    (Drawn all at once, 80 resamples of 50,000 rows held four (80, 50000) arrays: 128 MB.)"""
    import sys
    import tracemalloc

    ceiling = 8 * 2**20  # blocks of 5 resamples at 50,000 rows
    monkeypatch.setattr(sys.modules["fairbench.metrics.bootstrap"], "MEMORY_CEILING_BYTES", ceiling)
    y, s, attrs = _data(50_000, seed=5)
    peaks = {}
    for b in (10, 80):
        tracemalloc.start()
        bootstrap(y, s, attrs, n_resamples=b, seed=0)
        peaks[b] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[80] - peaks[10] < 2**20, peaks
    layout_and_auc = 100 * 2**20  # the problem's own arrays (as for `evaluate`) and the AUC's work arrays
    assert peaks[80] < ceiling + layout_and_auc, peaks
