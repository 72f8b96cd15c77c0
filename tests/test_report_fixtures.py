"""Builders for fake results folders with known predictions, shared by the report/table tests.

Metric suites are computed here independently (sklearn AUC, per-group rates in plain numpy, checked
against fairlearn once below), not with fairbench.metrics, so the report code is checked against a
reference it does not share. fairlearn itself is too slow to call for every fixture run.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import roc_auc_score

from fairbench.files import write_json_atomic
from fairbench.runs.results import RESULT_SCHEMA, config_hash, run_dir

GROUP_NAMES = {
    "race": {0: "Asian", 1: "Black", 2: "White"},
    "gender": {0: "Female", 1: "Male"},
    "ethnicity": {0: "Non-Hispanic", 1: "Hispanic"},
    "language": {0: "English", 1: "Spanish", 2: "Other"},
}
N_TEST = 240


def _gap(rates: list[float | None]) -> float:
    values = [r for r in rates if r is not None]
    return float(max(values) - min(values))


def reference_suite(labels: np.ndarray, scores: np.ndarray, attrs: dict[str, np.ndarray]) -> dict:
    """The metric-suite dict of fairbench.runs.results' schema, from sklearn and fairlearn."""
    pred = (scores >= 0.5).astype(int)
    auc = float(roc_auc_score(labels, scores))
    suite = {"n": int(len(labels)), "threshold": 0.5, "auc": auc, "accuracy": float((pred == labels).mean()),
             "attributes": {}}
    for attr, codes in attrs.items():
        groups = {}
        for code, name in GROUP_NAMES[attr].items():
            m = codes == code
            y, p, s = labels[m], pred[m], scores[m]
            both = len(np.unique(y)) == 2
            groups[name] = {
                "code": code, "n": int(m.sum()), "positives": int(y.sum()),
                "auc": float(roc_auc_score(y, s)) if both else None,
                "accuracy": float((p == y).mean()), "tpr": float(p[y == 1].mean()) if y.any() else None,
                "fpr": float(p[y == 0].mean()) if (y == 0).any() else None, "selection_rate": float(p.mean()),
            }
        gaucs = np.array([g["auc"] for g in groups.values() if g["auc"] is not None])
        gaccs = np.array([g["accuracy"] for g in groups.values()])
        acc = suite["accuracy"]
        suite["attributes"][attr] = {
            "auc": auc, "accuracy": acc,
            "es_auc": auc / (1 + np.abs(auc - gaucs).sum()), "es_acc": acc / (1 + np.abs(acc - gaccs).sum()),
            "dpd": _gap([g["selection_rate"] for g in groups.values()]),
            "eod": max(_gap([g["tpr"] for g in groups.values()]), _gap([g["fpr"] for g in groups.values()])),
            "group_auc_std": float(gaucs.std() / auc), "group_auc_range": float(np.ptp(gaucs) / auc),
            "groups": groups,
        }
    return suite


def population(seed: int = 123, n: int = N_TEST) -> dict[str, np.ndarray]:
    """Fixed test split (same for every run, as in a real benchmark)."""
    rng = np.random.default_rng(seed)
    return {
        "sample": np.arange(1000, 1000 + n), "label": rng.integers(0, 2, n),
        "race": rng.integers(0, 3, n), "gender": rng.integers(0, 2, n),
        "ethnicity": rng.integers(0, 2, n), "language": rng.integers(0, 3, n),
    }


def make_scores(pop: dict[str, np.ndarray], strength: float, seed: int) -> np.ndarray:
    """Scores with a known signal; Black patients (race 1) get a noisier score (a fairness gap)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, len(pop["label"])) * np.where(pop["race"] == 1, 2.0, 1.0)
    return 1 / (1 + np.exp(-(strength * (2 * pop["label"] - 1) + noise)))


def write_run(root: Path, method: str, arch: str, attribute: str | None, seed: int, *, strength: float = 1.0,
              dataset: str = "fairvlmed", synthetic: bool = False, selection: str = "val",
              config: dict | None = None, predictions: bool = True, pop: dict | None = None,
              score_seed: int | None = None) -> dict:
    """Write one finished run (predictions CSVs, history, result.json last); return the record."""
    pop = pop if pop is not None else population()
    config = config or {"method": method, "arch": arch, "epochs": 10, "lr": 1e-5, "method_settings": {}}
    cfg_hash = config_hash(config)
    folder = run_dir(root, dataset, method, arch, attribute, cfg_hash, seed)
    folder.mkdir(parents=True, exist_ok=True)
    if score_seed is None:
        score_seed = zlib.crc32(f"{method}/{arch}/{attribute}/{seed}/{cfg_hash}".encode())
    scores = make_scores(pop, strength, seed=score_seed)
    if predictions:
        lines = ["sample,label,score,race,gender,ethnicity,language"]
        lines += [f"{s},{y},{float(p)!r},{r},{g},{e},{la}" for s, y, p, r, g, e, la in zip(
            pop["sample"], pop["label"], scores, pop["race"], pop["gender"], pop["ethnicity"], pop["language"],
            strict=True)]
        (folder / "predictions_test.csv").write_text("\n".join(lines) + "\n")
        (folder / "predictions_val.csv").write_text("\n".join(lines[:50]) + "\n")
    (folder / "history.json").write_text("[]\n")
    attrs = {a: pop[a] for a in GROUP_NAMES}
    suite = reference_suite(pop["label"], scores, attrs)
    record = {
        "schema": RESULT_SCHEMA, "run_id": str(folder.relative_to(root)), "method": method, "arch": arch,
        "attribute": attribute, "seed": seed,
        "dataset": {"tag": dataset, "synthetic": synthetic, "path": "/data/x", "fingerprint": "abc",
                    "n": {"train": 700, "val": 100, "test": len(pop["label"])}, "n_dropped": {"val": 0, "test": 0}},
        "config": config, "config_hash": cfg_hash,
        "selection": {"rule": selection, "metric": "auc", "epoch": 3,
                      "label": "best validation AUC" if selection == "val" else "best TEST AUC"},
        "metrics": {"val": suite, "test": suite}, "epochs_trained": 10,
        "versions": {"fairbench": "0.1.0", "torch": "2.x", "python": "3.11"}, "device": "cpu",
        "timings": {"train_s": 1.0, "eval_s": 0.1, "total_s": 1.1}, "finished_at": "2025-01-01T00:00:00Z",
        "files": {"predictions_test": "predictions_test.csv", "predictions_val": "predictions_val.csv"},
    }
    write_json_atomic(folder / "result.json", record)
    return record


def build_results(root: Path) -> Path:
    """A small benchmark: clip (no attribute), fairclip on race/gender (two lambdas), fairmoe missing seed 1,
    plus a synthetic dataset and a test-selected run that must never share a table with the rest."""
    for seed in range(3):
        write_run(root, "clip", "b16", None, seed, strength=0.8)
        for attr in ("race", "gender"):
            write_run(root, "fairclip", "b16", attr, seed, strength=1.0,
                      config={"method": "fairclip", "epochs": 10, "method_settings": {"lambda": 1e-5}})
            write_run(root, "fairclip", "b16", attr, seed, strength=1.1,
                      config={"method": "fairclip", "epochs": 10, "method_settings": {"lambda": 1e-4}})
    for seed in (0, 2):
        write_run(root, "fairmoe", "b16", "race", seed, strength=1.5)
    for seed in range(2):
        write_run(root, "clip", "tiny", None, seed, strength=2.0, dataset="synthetic", synthetic=True)
        write_run(root, "fairmoe", "tiny", "race", seed, strength=2.5, dataset="synthetic", synthetic=True)
    write_run(root, "clip", "b16", None, 0, strength=0.8, selection="test",
              config={"method": "clip", "arch": "b16", "epochs": 10, "selection": "test"})
    return root


def test_reference_suite_matches_fairlearn():
    pop = population()
    scores = make_scores(pop, 1.0, seed=5)
    suite = reference_suite(pop["label"], scores, {a: pop[a] for a in GROUP_NAMES})
    pred = (scores >= 0.5).astype(int)
    for attr in GROUP_NAMES:
        block = suite["attributes"][attr]
        kw = {"sensitive_features": pop[attr]}
        assert abs(block["dpd"] - demographic_parity_difference(pop["label"], pred, **kw)) < 1e-12
        assert abs(block["eod"] - equalized_odds_difference(pop["label"], pred, **kw)) < 1e-12
