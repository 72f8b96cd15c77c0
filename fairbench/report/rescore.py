"""Re-scoring saved predictions when a table asks for what the run did not compute: a decision threshold chosen on
each run's VALIDATION predictions (Youden's J or best F1), and intersectional attributes (`sex+site`).

A threshold is never fitted on test labels (MEDFAIR #16: fitting it on the evaluated samples flatters every
threshold metric); 0.5 stays the default, the published protocol. An intersection's groups below a minimum size (in
the test split of a run) are too small to rank: they are recoded as unknown, so they enter no gap and no worst-group
AUC, and every table that uses them lists them with their size.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairbench.metrics.suite import evaluate
from fairbench.report.load import dataset_name, load_predictions

THRESHOLD_LABELS = {"0.5": "0.5", "youden": "Youden's J on validation", "f1": "best F1 on validation"}
THRESHOLD_RULES = {
    "0.5": "0.5 (the published protocol)",
    "youden": "Youden's J (TPR − FPR) maximised on each run's validation predictions",
    "f1": "best F1 on each run's validation predictions",
}
MIN_GROUP_SIZE = 30  # test rows an intersection's group needs to be ranked (shown as too small below it)
JOIN = "+"


def _curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct score t, descending, with the true and false positives of the rule "positive iff score ≥ t"."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.int64)
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    last = np.r_[s[1:] != s[:-1], True]
    return s[last], tp[last], fp[last]


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score t maximising TPR − FPR of "score ≥ t", computed exactly as tp·N − fp·P (no float ties); among
    equal maxima the highest t (fewest positives). A ValueError when the labels have one class."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("Youden's J needs both labels in the validation predictions")
    thresholds, tp, fp = _curve(labels, scores)
    j = tp * negatives - fp * positives
    return float(thresholds[int(np.argmax(j))])


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score t maximising F1 = 2tp / (2tp + fp + fn) of "score ≥ t"; among equal maxima the lowest t (as
    sklearn's precision_recall_curve with argmax orders them). A ValueError without positives."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("best F1 needs positive labels in the validation predictions")
    thresholds, tp, fp = _curve(labels, scores)
    f1 = 2 * tp / (2 * tp + fp + (positives - tp))
    best = np.flatnonzero(f1 == f1.max())
    return float(thresholds[best[-1]])


def choose_threshold(rule: str, labels: np.ndarray, scores: np.ndarray) -> float:
    if rule == "0.5":
        return 0.5
    if rule == "youden":
        return youden_threshold(labels, scores)
    if rule == "f1":
        return best_f1_threshold(labels, scores)
    raise ValueError(f"threshold rule {rule!r} is not one of {', '.join(THRESHOLD_RULES)}")


def intersection_parts(name: str) -> tuple[str, ...]:
    """`sex+site` → ("sex", "site"); a plain attribute → (name,)."""
    return tuple(p.strip() for p in name.split(JOIN) if p.strip())


def intersect(columns: dict[str, np.ndarray], names: dict[str, dict[int, str]], min_size: int
              ) -> tuple[np.ndarray, dict[int, str], dict[str, int]]:
    """Codes of the intersection of `columns` (attribute → integer codes, −1 unknown), its group names ("F &
    Site A") and the groups below `min_size` rows with their size (recoded −1: unknown)."""
    parts = list(columns)
    stacked = np.stack([np.asarray(columns[p], dtype=np.int64) for p in parts], axis=1)
    known = (stacked >= 0).all(axis=1)
    combos, inverse = np.unique(stacked[known], axis=0, return_inverse=True)
    codes = np.full(len(stacked), -1, dtype=np.int64)
    codes[known] = inverse.reshape(-1)
    counts = np.bincount(codes[known], minlength=len(combos))
    label = {i: " & ".join(names.get(p, {}).get(int(c), str(int(c))) for p, c in zip(parts, combo, strict=True))
             for i, combo in enumerate(combos)}
    small = {label[i]: int(counts[i]) for i in range(len(combos)) if counts[i] < min_size}
    for i in range(len(combos)):
        if counts[i] < min_size:
            codes[codes == i] = -1
    return codes, {i: label[i] for i in range(len(combos)) if counts[i] >= min_size}, small


@dataclass
class Rescored:
    records: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    too_small: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # intersection → group → sizes

    def table_notes(self, rule: str, attribute: str | None) -> list[str]:
        out = []
        if rule != "0.5" and self.thresholds:
            lo, hi = min(self.thresholds), max(self.thresholds)
            out.append(f"threshold: {THRESHOLD_RULES[rule]}, then applied to the test predictions "
                       f"({lo:.4f}–{hi:.4f} over {len(self.thresholds)} runs); AUC, ES-AUC and ECE do not depend on "
                       "it. Never fitted on test labels.")
        for name, groups in self.too_small.items():
            if attribute is not None and attribute != name:
                continue
            listed = ", ".join(f"{g} (n={min(n)}" + (f"–{max(n)}" if max(n) != min(n) else "") + ")"
                               for g, n in sorted(groups.items()))
            out.append(f"{name}: groups below {self.min_size} test samples are too small to rank and are left out "
                       f"of its gaps and worst-group AUC: {listed}.")
        return out

    min_size: int = MIN_GROUP_SIZE


def rescore(records: Iterable[dict[str, Any]], *, threshold: str = "0.5", intersections: Iterable[str] = (),
            min_size: int = MIN_GROUP_SIZE) -> Rescored:
    """Each run's test suite recomputed from its saved predictions at the threshold `threshold` picks on its
    validation predictions, with `intersections` added as attributes. A run whose predictions cannot give that
    (missing files, a one-class validation split) is left out with a one-line note, never mixed in at another
    threshold."""
    from fairbench.registry import DATASETS

    out = Rescored([], min_size=min_size)
    wanted = [intersection_parts(name) for name in intersections]
    for rec in records:
        test, why = load_predictions(rec, "test")
        if test is None:
            out.notes.append(f"{rec.get('run_id') or rec['_dir']}: left out: {why}")
            continue
        t = 0.5
        if threshold != "0.5":
            val, why = load_predictions(rec, "val")
            try:
                if val is None:
                    raise ValueError(why)
                t = choose_threshold(threshold, val["label"].to_numpy(), val["score"].to_numpy())
            except ValueError as exc:
                out.notes.append(f"{rec.get('run_id') or rec['_dir']}: left out: no {threshold} threshold ({exc})")
                continue
        suite_attrs = list(rec["metrics"]["test"].get("attributes") or {})
        name = dataset_name(rec)
        names = dict(DATASETS.get(name).attributes) if name in DATASETS else {}
        attrs = {a: test[a].to_numpy() for a in suite_attrs if a in test}
        group_names = {a: names.get(a, {}) for a in attrs}
        for parts in wanted:
            if not all(p in test for p in parts):
                out.notes.append(f"{rec.get('run_id') or rec['_dir']}: no {JOIN.join(parts)}: its predictions lack "
                                 f"{', '.join(p for p in parts if p not in test)}")
                continue
            key = JOIN.join(parts)
            codes, labels, small = intersect({p: test[p].to_numpy() for p in parts}, names, min_size)
            attrs[key], group_names[key] = codes, labels
            for g, n in small.items():
                out.too_small.setdefault(key, {}).setdefault(g, []).append(n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined group metrics are NaN in the table, as in the run
            suite = evaluate(test["label"].to_numpy(), test["score"].to_numpy(), attrs, threshold=t,
                             group_names=group_names)
        new = copy.copy(rec)
        new["metrics"] = {**rec["metrics"], "test": suite.to_dict()}
        out.records.append(new)
        if threshold != "0.5" and math.isfinite(t):
            out.thresholds.append(t)
    return out
