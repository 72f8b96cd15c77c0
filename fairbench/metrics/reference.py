"""The built-in suite recomputed with fairlearn and scikit-learn calls: the independent reference that the tests
(tests/test_metrics.py) and the speed benchmark (bench/bench_metrics.py) check the vectorised kernel against.

The formulas (fairbench.metrics' package docstring) are written here once. Needs fairlearn, which the `reference`
extra installs (`pip install 'fairbench-medvlm[reference]'`; the `test` extra includes it). Every group must hold both
classes, as fairlearn and sklearn then agree with the suite's decided edge cases.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _fairlearn() -> Any:
    try:
        import fairlearn.metrics as fairlearn_metrics
    except ImportError as exc:
        raise ImportError("fairbench.metrics.reference needs fairlearn; pip install 'fairbench-medvlm[reference]'") \
            from exc
    return fairlearn_metrics


def between_groups(auc: float, acc: float, group_auc: np.ndarray, group_acc: np.ndarray, labels: np.ndarray,
                   predicted: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """The attribute-level metrics from the overall and per-group AUC and accuracy (FairCLIP's formulas; DPD and EOD
    as fairlearn's calls)."""
    fl = _fairlearn()
    return {
        "es_auc": auc / (1 + np.abs(auc - group_auc).sum()),
        "es_acc": acc / (1 + np.abs(acc - group_acc).sum()),
        "dpd": fl.demographic_parity_difference(labels, predicted, sensitive_features=groups),
        "eod": fl.equalized_odds_difference(labels, predicted, sensitive_features=groups),
        "group_auc_std": np.std(group_auc) / auc,
        "group_auc_range": (group_auc.max() - group_auc.min()) / auc,
    }


def reference_suite(labels: np.ndarray, scores: np.ndarray, attributes: dict[str, np.ndarray],
                    threshold: float = 0.5) -> dict[str, Any]:
    """{"auc", "accuracy", attribute: {between_groups' metrics, "group_auc": (G,), "groups": fairlearn's
    MetricFrame.by_group with n, accuracy, tpr, fpr, selection_rate per group}} via fairlearn's MetricFrame."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    fl = _fairlearn()
    predicted = (scores >= threshold).astype(int)
    auc, acc = roc_auc_score(labels, scores), accuracy_score(labels, predicted)
    out: dict[str, Any] = {"auc": auc, "accuracy": acc}
    for name, groups in attributes.items():
        frame = fl.MetricFrame(metrics={"n": fl.count, "accuracy": accuracy_score, "tpr": fl.true_positive_rate,
                                        "fpr": fl.false_positive_rate, "selection_rate": fl.selection_rate},
                               y_true=labels, y_pred=predicted, sensitive_features=groups).by_group
        group_auc = fl.MetricFrame(metrics=roc_auc_score, y_true=labels, y_pred=scores,
                                   sensitive_features=groups).by_group.to_numpy()
        out[name] = {**between_groups(auc, acc, group_auc, frame["accuracy"].to_numpy(), labels, predicted, groups),
                     "group_auc": group_auc, "groups": frame}
    return out


def reference_direct(labels: np.ndarray, scores: np.ndarray, attributes: dict[str, np.ndarray],
                     threshold: float = 0.5) -> dict[str, Any]:
    """The same numbers with direct per-group sklearn/fairlearn calls (no MetricFrame): the leaner baseline."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    fl = _fairlearn()
    predicted = (scores >= threshold).astype(int)
    auc, acc = roc_auc_score(labels, scores), accuracy_score(labels, predicted)
    out: dict[str, Any] = {"auc": auc, "accuracy": acc}
    for name, groups in attributes.items():
        per_group = {}
        for code in np.unique(groups):
            m = groups == code
            y, p = labels[m], predicted[m]
            per_group[int(code)] = {
                "n": int(m.sum()), "auc": roc_auc_score(y, scores[m]), "accuracy": accuracy_score(y, p),
                "tpr": fl.true_positive_rate(y, p), "fpr": fl.false_positive_rate(y, p),
                "selection_rate": fl.selection_rate(y, p)}
        group_auc = np.array([v["auc"] for v in per_group.values()])
        group_acc = np.array([v["accuracy"] for v in per_group.values()])
        out[name] = {**between_groups(auc, acc, group_auc, group_acc, labels, predicted, groups), "groups": per_group}
    return out
