"""`fairbench compare`: paired tests over seeds and test samples, checked against scipy and sklearn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.report.compare_render import render_comparisons
from fairbench.report.load import load_results
from fairbench.report.significance import CompareError, MetricComparison, _verdict, compare_methods
from tests.helpers import write_run

SEEDS = range(5)


def _shuffle_predictions(run: Path, seed: int) -> None:
    """Reorder a predictions file so only the `sample` column can pair it with the other method's."""
    path = run / "predictions_test.csv"
    frame = pd.read_csv(path)
    frame.sample(frac=1.0, random_state=seed).to_csv(path, index=False)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmp")
    for seed in SEEDS:
        write_run(root, "strong", "b16", "race", seed, strength=2.5)
        rec = write_run(root, "weak", "b16", None, seed, strength=0.4)
        _shuffle_predictions(root / rec["run_id"], seed)
        write_run(root, "twin", "b16", None, seed, strength=0.4, score_seed=1000 + seed)
        write_run(root, "twin2", "b16", None, seed, strength=0.4, score_seed=1000 + seed)
    return root


@pytest.fixture(scope="module")
def records(root: Path) -> list[dict]:
    return load_results(root).records


def _per_seed(records: list[dict], method: str, key) -> list[float]:
    by_seed = {r["seed"]: key(r["metrics"]["test"]) for r in records if r["method"] == method}
    return [100 * by_seed[s] for s in SEEDS]


def test_seed_level_tests_match_scipy(records):
    (comp,) = compare_methods(records, "strong", "weak", "race", n_resamples=200)
    auc, es = comp.metrics
    assert (auc.label, es.label) == ("AUC", "ES-AUC race")
    a = _per_seed(records, "strong", lambda s: s["auc"])
    b = _per_seed(records, "weak", lambda s: s["auc"])
    assert auc.a == pytest.approx(a) and auc.b == pytest.approx(b)
    assert auc.t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    assert auc.wins[0] == wins
    assert auc.sign_p == pytest.approx(stats.binomtest(wins, 5, 0.5).pvalue)
    ea = _per_seed(records, "strong", lambda s: s["attributes"]["race"]["es_auc"])
    eb = _per_seed(records, "weak", lambda s: s["attributes"]["race"]["es_auc"])
    assert es.diff == pytest.approx(np.mean(np.subtract(ea, eb)))


def test_bootstrap_pairs_by_sample_column(root, records):
    (comp,) = compare_methods(records, "strong", "weak", "race", n_resamples=300)
    auc = comp.metrics[0]
    assert [s for s, *_ in auc.boot_seeds] == list(SEEDS)
    # the weak method's file is shuffled: the estimate is right only if rows were matched by `sample`
    for seed, diff, low, high, _ in auc.boot_seeds:
        pa = pd.read_csv(next((root / "fairvlmed" / "strong").rglob(f"seed{seed}/predictions_test.csv")))
        pb = pd.read_csv(next((root / "fairvlmed" / "weak").rglob(f"seed{seed}/predictions_test.csv")))
        m = pa.merge(pb, on="sample")
        ref = roc_auc_score(m.label_x, m.score_x) - roc_auc_score(m.label_x, m.score_y)
        assert diff == pytest.approx(100 * ref)
        assert low < diff < high
    assert auc.boot_low < auc.diff < auc.boot_high
    assert auc.verdict.startswith("strong better: the difference exceeds both training-seed noise (t-test p")
    assert "and test-set sampling noise (paired bootstrap p" in auc.verdict


def test_identical_predictions_are_not_distinguishable(records):
    (comp,) = compare_methods(records, "twin", "twin2", "race", n_resamples=200)
    for m in comp.metrics:
        assert m.diff == 0 and m.wins == (0, 0, 5)
        assert m.verdict.startswith("not distinguishable: the difference is within both training-seed noise")
        assert m.boot_low == 0 and m.boot_high == 0


def test_missing_seed_and_missing_predictions_are_notes(root, records, tmp_path):
    part = [r for r in records if not (r["method"] == "weak" and r["seed"] == 4)]
    (comp,) = compare_methods(part, "strong", "weak", "race", n_resamples=100)
    assert comp.seeds == [0, 1, 2, 3]
    assert any("seed(s) 4" in n for n in comp.notes)
    gone = dict(next(r for r in part if r["method"] == "weak" and r["seed"] == 0))
    gone["_dir"] = str(tmp_path)  # a run folder without predictions
    part = [gone if (r["method"], r["seed"]) == ("weak", 0) else r for r in part]
    (comp,) = compare_methods(part, "strong", "weak", "race", n_resamples=100)
    assert any("seed 0:" in n and "missing" in n for n in comp.notes)
    assert np.isnan(comp.metrics[0].boot_low)  # no pooled CI without every seed's predictions
    assert len(comp.metrics[0].boot_seeds) == 3


def test_unknown_method_and_ambiguous_configs_raise(records, tmp_path):
    with pytest.raises(CompareError, match="no finished runs of 'nosuch'"):
        compare_methods(records, "nosuch", "weak", "race")
    write_run(tmp_path, "x", "b16", None, 0, config={"method": "x", "lr": 1e-5})
    write_run(tmp_path, "x", "b16", None, 0, config={"method": "x", "lr": 1e-4})
    write_run(tmp_path, "y", "b16", None, 0)
    recs = load_results(tmp_path).records
    with pytest.raises(CompareError, match=r"2 configs .*lr=0\.0001.*--config-a"):
        compare_methods(recs, "x", "y", "race")
    cfg = next(r["config_hash"] for r in recs if r["method"] == "x" and r["config"]["lr"] == 1e-4)
    (comp,) = compare_methods(recs, "x", "y", "race", config_a=cfg[:6], bootstrap=False)
    assert comp.seeds == [0]


def test_cli_json_and_errors(root):
    result = CliRunner().invoke(app, ["compare", "strong", "weak", "--out", str(root), "--attr", "race",
                                      "--resamples", "100", "--format", "json"])
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)
    assert doc["method_a"] == "strong" and doc["seeds"] == list(SEEDS) and doc["scale"] == 100
    assert [m["metric"] for m in doc["metrics"]] == ["auc", "es_auc"]
    text = CliRunner().invoke(app, ["compare", "strong", "weak", "--out", str(root), "--resamples", "50"])
    assert text.exit_code == 0 and "verdict AUC: strong better" in text.stdout
    assert "paired bootstrap per seed" in text.stdout
    bad = CliRunner().invoke(app, ["compare", "strong", "nosuch", "--out", str(root)])
    assert bad.exit_code == 2 and "no finished runs of 'nosuch'" in bad.stderr and "Traceback" not in bad.output


def test_pooled_ci_when_every_seed_shares_the_test_set(records):
    """Regression: string sample ids were compared by object pointers, so seeds never looked alike."""
    (comp,) = compare_methods(records, "strong", "weak", "race", n_resamples=200)
    assert not any("different test samples" in note for note in comp.notes)
    assert np.isfinite(comp.metrics[0].boot_low) and comp.metrics[0].boot_low <= comp.metrics[0].boot_high


def test_one_verdict_names_both_noise_sources_when_only_the_bootstrap_resolves(tmp_path):
    """One seed far ahead, the others tied: a large test set resolves the mean gap, the seeds do not."""
    for seed in range(3):
        write_run(tmp_path, "lucky", "b16", None, seed, strength=2.6 if seed == 0 else 0.4, score_seed=50 + seed)
        write_run(tmp_path, "plain", "b16", None, seed, strength=0.4, score_seed=90 + seed)
    (comp,) = compare_methods(load_results(tmp_path).records, "lucky", "plain", "race", n_resamples=200)
    auc = comp.metrics[0]
    assert auc.boot_p < 0.05 < auc.t_p  # the situation the first-hour user met
    assert auc.verdict == (f"not distinguishable: the difference is within training-seed noise (t-test p = "
                           f"{auc.t_p:.3f} over 3 seeds), although the test set is large enough to resolve it "
                           f"(paired bootstrap p = {auc.boot_p:.3f})")
    text = " ".join(render_comparisons([comp]).split())
    assert text.count("verdict AUC:") == 1 and text.count("verdict ES-AUC race:") == 1
    assert "measure training randomness" in text and "measures test-set sampling" in text
    assert "better on the test set, but" not in text  # the old pair of half-verdicts is gone


def _mc(t_p: float, boot_p: float, diff: float = 1.0) -> MetricComparison:
    return MetricComparison("auc", "AUC", [0, 1, 2], [diff, diff, diff], [0.0, 0.0, 0.0], t_p=t_p, boot_p=boot_p)


NAN = float("nan")


@pytest.mark.parametrize("t_p, boot_p, start, names", [
    (0.01, 0.01, "A better: the difference exceeds both", ("training-seed", "test-set sampling")),
    (0.30, 0.002, "not distinguishable: the difference is within training-seed noise", ("test set is large",)),
    (0.01, 0.40, "not distinguishable: the difference is within test-set sampling noise", ("across training seeds",)),
    (0.30, 0.40, "not distinguishable: the difference is within both training-seed noise", ("test-set sampling",)),
    (NAN, 0.002, "undetermined: one paired seed cannot measure training-seed noise", ("resolves it",)),
    (0.01, NAN, "undetermined: test-set sampling noise was not measured", ("consistent across seeds",)),
    (NAN, NAN, "not testable:", ("training-seed noise", "test-set sampling noise")),
])
def test_verdict_covers_every_outcome_with_one_reason(t_p, boot_p, start, names):
    verdict = _verdict(_mc(t_p, boot_p), 0.05, ("A", "B"))
    assert verdict.startswith(start), verdict
    assert all(n in verdict for n in names)
    assert _verdict(_mc(t_p, boot_p, diff=-1.0), 0.05, ("A", "B")).replace("B better", "A better") == verdict


def _bh_loop(p: list[float]) -> list[float]:
    """Benjamini–Hochberg written out: q_(i) = min over j ≥ i of p_(j)·m/j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def test_bh_adjustment_equals_scipy_and_a_loop_and_keeps_nan():
    from fairbench.report.significance import bh_adjust

    p = [0.01, 0.04, 0.03, 0.20, 0.005]
    assert bh_adjust(p) == pytest.approx(stats.false_discovery_control(p, method="bh").tolist(), abs=1e-15)
    assert bh_adjust(p) == pytest.approx(_bh_loop(p), abs=1e-12)
    with_nan = bh_adjust([0.01, float("nan"), 0.04])
    assert np.isnan(with_nan[1]) and with_nan[0] == pytest.approx(0.02) and with_nan[2] == pytest.approx(0.04)


def test_cli_compare_many_pairs_reports_bh_adjusted_p_values_over_all_of_them(root):
    result = CliRunner().invoke(app, ["compare", "weak", "strong,twin,twin2", "--out", str(root), "--attr", "race",
                                      "--resamples", "60", "--format", "json"])
    assert result.exit_code == 0, result.output
    docs = json.loads(result.stdout)
    assert [d["method_b"] for d in docs] == ["strong", "twin", "twin2"]
    rows = [m for d in docs for m in d["metrics"]]
    for raw, adjusted in (("t_test_p", "t_test_q_bh"), ("bootstrap_p", "bootstrap_q_bh")):
        p = [m[raw] for m in rows]
        assert None not in p and len(p) == 6
        assert [m[adjusted] for m in rows] == pytest.approx(stats.false_discovery_control(p).tolist(), abs=1e-12)
    text = CliRunner().invoke(app, ["compare", "weak", "strong,twin", "--out", str(root), "--resamples", "50"])
    assert text.exit_code == 0 and "BH q" in text.stdout and "Benjamini–Hochberg" in text.stdout
