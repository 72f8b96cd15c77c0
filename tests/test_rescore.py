"""Thresholds chosen on validation (Youden's J, best F1) against sklearn's curves, and intersectional attributes with
their minimum group size, through `fairbench table`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import equalized_odds_difference
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.report.rescore import best_f1_threshold, intersect, youden_threshold
from tests.helpers import write_run


@pytest.mark.parametrize("seed", range(5))
def test_youden_and_f1_match_sklearn_curves(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = rng.random(300) * 0.5 + 0.3 * y  # distinct scores: sklearn's float argmax has no ties to break
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    assert youden_threshold(y, p) == thr[np.argmax(tpr - fpr)]
    precision, recall, thr = precision_recall_curve(y, p)
    f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1])
    assert best_f1_threshold(y, p) == thr[np.nanargmax(f1)]


def test_tie_rules_are_exact():
    # J is 1/3 at 0.9, 0.7 and 0.5; float rounding makes sklearn's argmax pick 0.5, the exact rule picks the highest
    y, p = np.array([1, 0, 1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert youden_threshold(y, p) == 0.9
    # F1 ties: the lowest threshold, as sklearn's ascending curve with argmax
    assert best_f1_threshold(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == 0.7
    with pytest.raises(ValueError, match="both labels"):
        youden_threshold(np.ones(4), np.arange(4.0))


def test_intersection_names_and_too_small_groups():
    race = np.array([0, 0, 0, 1, 1, 1, 1, -1])
    sex = np.array([0, 0, 1, 0, 0, 1, 1, 1])
    codes, names, small = intersect({"race": race, "sex": sex}, {"race": {0: "A", 1: "B"}, "sex": {0: "F", 1: "M"}},
                                    min_size=2)
    assert sorted(names.values()) == ["A & F", "B & F", "B & M"]
    assert small == {"A & M": 1}
    shown = [names.get(int(c), "unknown") if c >= 0 else "unknown" for c in codes]
    assert shown == ["A & F", "A & F", "unknown", "B & F", "B & F", "B & M", "B & M", "unknown"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rescore")
    for seed in range(2):
        write_run(root, "clip", "b16", None, seed, strength=1.0)
        write_run(root, "fairclip", "b16", "race", seed, strength=1.2)
    return root


def _long(root: Path, *args: str) -> pd.DataFrame:
    result = CliRunner().invoke(app, ["table", "--out", str(root), "--format", "long-csv", *args])
    assert result.exit_code == 0, result.output
    return pd.read_csv(io.StringIO(result.stdout))


def test_table_threshold_on_validation_is_recomputed_per_run_and_labelled(root):
    frame = _long(root, "--threshold", "youden")
    for result in root.rglob("result.json"):
        rec = json.loads(result.read_text())
        val = pd.read_csv(result.parent / "predictions_val.csv")
        test = pd.read_csv(result.parent / "predictions_test.csv")
        fpr, tpr, thr = roc_curve(val["label"], val["score"], drop_intermediate=False)
        t = thr[np.argmax(tpr - fpr)]
        expected = equalized_odds_difference(test["label"], (test["score"] >= t).astype(int),
                                             sensitive_features=test["race"])
        got = frame[(frame.run_id == rec["run_id"]) & (frame.eval_attribute == "race") & (frame.metric == "eod")]
        assert got["value"].iloc[0] == pytest.approx(expected, abs=1e-12)
    text = CliRunner().invoke(app, ["table", "--out", str(root), "--attr", "race", "--threshold", "f1", "--format",
                                    "markdown"])
    assert text.exit_code == 0, text.output
    assert "threshold: best F1 on validation" in text.stdout and "Never fitted on test labels" in text.stdout
    bad = CliRunner().invoke(app, ["table", "--out", str(root), "--threshold", "test"])
    assert bad.exit_code == 2 and "never offered" in bad.output and "Traceback" not in bad.output


def test_intersectional_attribute_table_with_too_small_groups(root):
    frame = _long(root, "--attr", "race+gender", "--min-group", "35")
    result = next(root.rglob("result.json"))
    run_id = json.loads(result.read_text())["run_id"]
    test = pd.read_csv(result.parent / "predictions_test.csv")
    sizes = test[(test.race >= 0) & (test.gender >= 0)].groupby(["race", "gender"]).size()
    kept = [k for k, n in sizes.items() if n >= 35]
    assert kept and len(kept) < len(sizes)  # some groups are too small at this size, some are not
    aucs = [roc_auc_score(test.label[(test.race == r) & (test.gender == g)],
                          test.score[(test.race == r) & (test.gender == g)]) for r, g in kept]
    rows = frame[(frame.run_id == run_id) & (frame.eval_attribute == "race+gender")]
    got = rows[rows.metric == "worst_group_auc"]
    assert got["value"].iloc[0] == pytest.approx(min(aucs), abs=1e-12)
    text = CliRunner().invoke(app, ["table", "--out", str(root), "--attr", "race+gender", "--min-group", "35"])
    assert text.exit_code == 0, text.output
    assert "too small to rank" in text.stdout and "fairclip" in text.stdout  # trained on race, a part of it
