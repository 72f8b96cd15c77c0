"""Is method A really better than method B? Paired tests on the same seeds and the same test set.

Two noise sources, tested separately and reported side by side:
- training randomness (seeds): a paired t-test and a sign test over the per-seed differences;
- test-set sampling noise: fairbench.metrics.paired_bootstrap per seed (both methods scored on the
  same resampled rows, matched by the predictions' `sample` column). With one bootstrap seed, row i
  of every seed's test set is drawn identically, so averaging replicates over seeds gives a CI for
  the seed-averaged difference.
A difference is called distinguishable from noise only when it survives both; the one verdict per
metric names the test that holds it back, so a tiny bootstrap p next to "not distinguishable" reads
as what it is (a large test set, but seeds that disagree), not as a contradiction.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fairbench.metrics.catalog import Metric, compare_metrics
from fairbench.report.aggregate import variant_labels
from fairbench.report.load import load_predictions


class CompareError(ValueError):
    """The two methods cannot be compared as asked (absent, ambiguous configs, no shared seeds)."""


@dataclass
class MetricComparison:
    """A − B for one metric (values scaled as the metric prints, × 100 for rates)."""

    metric: str
    label: str
    seeds: list[int]
    a: list[float]
    b: list[float]
    t_p: float = math.nan
    sign_p: float = math.nan
    wins: tuple[int, int, int] = (0, 0, 0)  # A better, B better, ties
    boot_low: float = math.nan
    boot_high: float = math.nan
    boot_p: float = math.nan
    boot_seeds: list[tuple[int, float, float, float, float]] = field(default_factory=list)  # seed, Δ, lo, hi, p
    verdict: str = ""
    scale: float = 100.0  # the metric's print scale: bootstrap differences are reported in it
    t_q: float = math.nan  # Benjamini–Hochberg adjusted t-test p over every comparison of one command
    boot_q: float = math.nan  # the same for the bootstrap p

    @property
    def diff(self) -> float:
        return float(np.mean(np.subtract(self.a, self.b))) if self.a else math.nan


@dataclass
class Comparison:
    method_a: str
    method_b: str
    arch: str
    attribute: str
    dataset: str
    synthetic: bool
    selection: str
    seeds: list[int]
    metrics: list[MetricComparison]
    notes: list[str] = field(default_factory=list)
    n_resamples: int = 0
    alpha: float = 0.05


def _overall(metric: Metric) -> bool:
    """Compared over all test rows (AUC), not per attribute (ES-AUC)."""
    return "overall" in metric.levels


def _metric_value(rec: dict[str, Any], metric: Metric, attr: str) -> float:
    suite = rec["metrics"]["test"]
    block = (suite.get("attributes") or {}).get(attr) or {}
    value = block.get(metric.name, suite.get(metric.name) if _overall(metric) else None)
    return math.nan if value is None else metric.scale * float(value)


def _pick(records: list[dict[str, Any]], method: str, attr: str, config: str | None,
          labels: dict[str, str]) -> dict[tuple, dict[int, dict[str, Any]]]:
    """Runs of `method` usable for attribute `attr`, by (dataset, synthetic, selection, arch) then seed."""
    out: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    hashes: dict[tuple, set[tuple[str, str]]] = defaultdict(set)
    for rec in records:
        if rec["method"] != method or rec.get("attribute") not in (None, attr):
            continue
        if attr not in (rec["metrics"]["test"].get("attributes") or {}):
            continue
        if config is not None and not rec["config_hash"].startswith(config):
            continue
        key = (rec["dataset"].get("tag"), bool(rec["dataset"].get("synthetic")), rec["selection"].get("rule"),
               rec["arch"])
        hashes[key].add((rec["config_hash"], labels[rec["_dir"]]))
        out[key][int(rec["seed"])] = rec
    for key, found in hashes.items():
        if len(found) > 1:
            listed = "; ".join(f"{h} ({label})" for h, label in sorted(found))
            raise CompareError(f"{method}/{key[3]} on {key[0]} has runs with {len(found)} configs ({listed}); "
                               f"pick one with --config-a/--config-b HASH")
    return out


def _single_run(runs: dict[int, dict[str, Any]]) -> bool:
    """One run of a seed-independent mode (result.json `single_run`)."""
    return len(runs) == 1 and bool(next(iter(runs.values())).get("single_run"))


def _seed_tests(mc: MetricComparison) -> None:
    from scipy import stats

    d = np.subtract(mc.a, mc.b)
    d = d[~np.isnan(d)]
    wins = (int((d > 0).sum()), int((d < 0).sum()), int((d == 0).sum()))
    mc.wins = wins
    if wins[0] + wins[1] > 0:
        mc.sign_p = float(stats.binomtest(wins[0], wins[0] + wins[1], 0.5).pvalue)
    if d.size >= 2:
        mc.t_p = 1.0 if np.all(d == d[0]) and d[0] == 0 else float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)


def _bootstrap(mc_by_key: dict[tuple[str, ...], MetricComparison], pairs: list[tuple[int, Any, Any]], attr: str,
               n_resamples: int, boot_seed: int, notes: list[str], ci: float, n_seeds: int) -> None:
    """Per-seed paired bootstrap, and the CI of the seed-averaged difference when every seed has one."""
    from fairbench.metrics import paired_bootstrap

    replicates: dict[tuple[str, ...], list[np.ndarray]] = defaultdict(list)
    test_sets: set[bytes] = set()
    for seed, pa, pb in pairs:
        merged = pa.merge(pb, on="sample", suffixes=("_a", "_b"), validate="one_to_one").sort_values("sample")
        dropped = max(len(pa), len(pb)) - len(merged)
        if dropped:
            notes.append(f"seed {seed}: {dropped} test samples appear in only one method's predictions; "
                         f"the bootstrap uses the {len(merged)} shared ones")
        if (merged["label_a"] != merged["label_b"]).any():
            bad = merged.loc[merged["label_a"] != merged["label_b"], "sample"].iloc[0]
            notes.append(f"seed {seed}: sample {bad} has different labels in the two predictions files: not the "
                         "same test set, bootstrap skipped for this seed")
            continue
        col = f"{attr}_a" if f"{attr}_a" in merged else attr
        if col not in merged:
            notes.append(f"seed {seed}: predictions have no {attr!r} column; bootstrap skipped for this seed")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undefined small-group metrics are reported as NaN, not warned
            res = paired_bootstrap(merged["label_a"].to_numpy(), merged["score_a"].to_numpy(),
                                   merged["score_b"].to_numpy(), {attr: merged[col].to_numpy()},
                                   n_resamples=n_resamples, seed=boot_seed, ci=ci)
        test_sets.add(tuple(merged["sample"].astype(str)))  # object arrays: compare values, not pointers
        for key, mc in mc_by_key.items():
            if key not in res.samples:
                continue
            diff = res.difference(*key)
            mc.boot_seeds.append((seed, mc.scale * diff.estimate, mc.scale * diff.low, mc.scale * diff.high,
                                  diff.p_value))
            replicates[key].append(mc.scale * res.samples[key])
    if len(test_sets) > 1:
        notes.append("seeds were scored on different test samples; no pooled bootstrap CI over seeds")
        return
    for key, mc in mc_by_key.items():
        reps = replicates.get(key, [])
        if len(reps) != n_seeds:
            continue
        mean = np.mean(np.vstack(reps), axis=0)
        mean = mean[~np.isnan(mean)]
        if mean.size == 0:
            continue
        mc.boot_low, mc.boot_high = (float(x) for x in np.percentile(mean, [50 * (1 - ci), 50 * (1 + ci)]))
        tail = min(np.count_nonzero(mean <= 0), np.count_nonzero(mean >= 0))
        mc.boot_p = min(1.0, 2.0 * (1.0 + tail) / (1.0 + mean.size))


def _seed_words(mc: MetricComparison) -> str:
    return f"t-test p {_p_text(mc.t_p)} over {len(mc.seeds)} seeds"


def _boot_words(mc: MetricComparison) -> str:
    return f"paired bootstrap p {_p_text(mc.boot_p)}"


def _p_text(p: float) -> str:
    return f"= {p:.3f}" if p >= 0.001 else "< 0.001"


def _verdict(mc: MetricComparison, alpha: float, names: tuple[str, str]) -> str:
    """One verdict with its reason, naming the noise each test covers.

    The t-test over seeds measures training randomness (would another seed flip the order?); the paired
    bootstrap over test samples measures test-set sampling (would another test set flip it?). A
    difference counts only when it clears both, so the verdict names the test that holds it back.
    """
    better = names[0] if mc.diff > 0 else names[1]
    seeds_ok = not math.isnan(mc.t_p) and mc.t_p < alpha
    boot_ok = not math.isnan(mc.boot_p) and mc.boot_p < alpha
    no_seeds, no_boot = math.isnan(mc.t_p), math.isnan(mc.boot_p)
    training = f"training-seed noise ({_seed_words(mc)})"
    sampling = f"test-set sampling noise ({_boot_words(mc)})"
    if no_seeds and no_boot:
        return ("not testable: training-seed noise needs ≥ 2 paired seeds and test-set sampling noise needs "
                "saved predictions")
    if seeds_ok and boot_ok:
        return f"{better} better: the difference exceeds both {training} and {sampling}"
    if no_seeds:
        clause = (f"the test set alone resolves it ({_boot_words(mc)}, {better} better)" if boot_ok
                  else f"it is also within {sampling}")
        return f"undetermined: one paired seed cannot measure training-seed noise; {clause}"
    if no_boot:
        clause = (f"consistent across seeds ({_seed_words(mc)}, {better} better)" if seeds_ok
                  else f"within {training}")
        return f"undetermined: test-set sampling noise was not measured (no paired predictions); {clause}"
    if boot_ok:
        return (f"not distinguishable: the difference is within {training}, although the test set is large "
                f"enough to resolve it ({_boot_words(mc)})")
    if seeds_ok:
        return (f"not distinguishable: the difference is within {sampling}, although it is consistent across "
                f"training seeds ({_seed_words(mc)})")
    return f"not distinguishable: the difference is within both {training} and {sampling}"


def compare_methods(records: list[dict[str, Any]], method_a: str, method_b: str, attr: str,
                    arch: str | None = None, dataset: str | None = None, select: str | None = None,
                    config_a: str | None = None, config_b: str | None = None, n_resamples: int = 1000,
                    boot_seed: int = 0, alpha: float = 0.05, bootstrap: bool = True,
                    metrics: list[Metric] | None = None) -> list[Comparison]:
    """Paired comparisons of A vs B on `attr`, one per (dataset, selection rule, arch) both methods ran, of
    `metrics` (default: every metric registered with compare=True)."""
    labels = variant_labels(records)
    runs_a = _pick(records, method_a, attr, config_a, labels)
    runs_b = _pick(records, method_b, attr, config_b, labels)
    keys = sorted(k for k in set(runs_a) & set(runs_b)
                  if (arch is None or k[3] == arch) and (dataset is None or k[0] == dataset)
                  and (select is None or k[2] == select))
    if not keys:
        raise CompareError(_nothing_shared(method_a, method_b, attr, runs_a, runs_b, arch, dataset, select))
    out = []
    for key in keys:
        a, b = runs_a[key], runs_b[key]
        single = [name for name, runs in ((method_a, a), (method_b, b)) if _single_run(runs)]
        if len(single) == 1 and _single_run(a):  # a seed-independent mode (zero-shot): its one run pairs with
            a = dict.fromkeys(b, next(iter(a.values())))  # every seed of the other method
        elif len(single) == 1:
            b = dict.fromkeys(a, next(iter(b.values())))
        seeds = sorted(set(a) & set(b))
        tag, synthetic, rule, arch_name = key
        comp = Comparison(method_a, method_b, arch_name, attr, tag, synthetic, rule, seeds, [],
                          n_resamples=n_resamples if bootstrap else 0, alpha=alpha)
        if len(single) == 1:
            comp.notes.append(f"{single[0]} is a single run (seed-independent): each seed of the other method is "
                              "paired with it, so the t-test measures that method's seed spread against fixed scores")
        only = sorted(set(a) ^ set(b))
        if only:
            comp.notes.append(f"seed(s) {', '.join(map(str, only))} ran for only one method and are left out")
        if not seeds:
            comp.notes.append("no seed ran for both methods: nothing to pair")
            out.append(comp)
            continue
        by_key: dict[tuple[str, ...], MetricComparison] = {}
        for metric in metrics if metrics is not None else compare_metrics():
            mc = MetricComparison(metric.name, metric.label if _overall(metric) else f"{metric.label} {attr}", seeds,
                                  [_metric_value(a[s], metric, attr) for s in seeds],
                                  [_metric_value(b[s], metric, attr) for s in seeds])
            _seed_tests(mc)
            by_key[(metric.name,) if _overall(metric) else (attr, metric.name)] = mc
            mc.scale = metric.scale
            comp.metrics.append(mc)
        if bootstrap:
            pairs = []
            for s in seeds:
                pa, why_a = load_predictions(a[s])
                pb, why_b = load_predictions(b[s])
                if pa is None or pb is None:
                    comp.notes.append(f"seed {s}: {why_a or why_b}; no bootstrap for this seed")
                    continue
                pairs.append((s, pa, pb))
            if pairs:
                _bootstrap(by_key, pairs, attr, n_resamples, boot_seed, comp.notes, 1 - alpha, len(seeds))
            if len(pairs) < len(seeds):
                comp.notes.append("the pooled bootstrap CI needs predictions for every paired seed")
        for mc in comp.metrics:
            mc.verdict = _verdict(mc, alpha, (method_a, method_b))
        if 0 < len(seeds) < 6:
            comp.notes.append(f"with {len(seeds)} seeds a two-sided sign test cannot reach p < 0.05 "
                              f"(smallest possible p = {2 * 0.5 ** len(seeds):.3g}); it is shown for reference")
        out.append(comp)
    return out


def _nothing_shared(method_a: str, method_b: str, attr: str, runs_a: dict, runs_b: dict, arch: str | None,
                    dataset: str | None, select: str | None) -> str:
    def where(runs: dict) -> str:
        return ", ".join(f"{k[0]}/{k[2]}/{k[3]}" for k in sorted(runs)) or "nowhere"

    for method, runs in ((method_a, runs_a), (method_b, runs_b)):
        if not runs:
            return (f"no finished runs of {method!r} usable for attribute {attr!r} (trained on {attr} or on no "
                    "attribute); check the method name with `fairbench table`")
    filt = f" matching --arch {arch or '*'} --dataset {dataset or '*'} --select {select or '*'}"
    return (f"{method_a} ({where(runs_a)}) and {method_b} ({where(runs_b)}) share no dataset/selection/arch"
            f"{filt}; both must run on the same data, rule and backbone to be paired")


def bh_adjust(p_values: list[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (scipy.stats.false_discovery_control, method "bh") of the defined
    entries; an undefined (NaN) p stays NaN and is not counted among the tests."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = false_discovery_control(p[ok], method="bh")
    return out.tolist()


def adjust_comparisons(comparisons: list[Comparison]) -> int:
    """Fill every metric comparison's BH-adjusted t-test and bootstrap p-values, one family per test over all the
    comparisons given (pairs × attributes × metrics of one command), so comparing many pairs does not make chance
    differences look real. Returns the size of the larger family. Adds a note where a "better" verdict, decided on
    the raw p-values, does not survive the adjustment."""
    rows = [mc for c in comparisons for mc in c.metrics]
    for field_p, field_q in (("t_p", "t_q"), ("boot_p", "boot_q")):
        for mc, q in zip(rows, bh_adjust([getattr(mc, field_p) for mc in rows]), strict=True):
            setattr(mc, field_q, q)
    family = max(sum(not math.isnan(getattr(mc, f)) for mc in rows) for f in ("t_p", "boot_p")) if rows else 0
    for c in comparisons:
        lost = [mc.label for mc in c.metrics if " better: " in mc.verdict
                and not (mc.t_q < c.alpha and mc.boot_q < c.alpha)]
        if lost and family > 1:
            c.notes.append(f"{', '.join(lost)}: the verdict uses the raw p-values; after Benjamini–Hochberg "
                           f"adjustment over the {family} tests of this command, q ≥ {c.alpha:g} for at least one "
                           "test, so it may be a chance finding among many comparisons")
    return family
