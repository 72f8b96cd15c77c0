"""Speed of the metric suite: fairbench vs the same numbers from fairlearn + scikit-learn, and the bootstrap.

Run: PYTHONPATH=. python bench/bench_metrics.py [--n 2000] [--resamples 1000]
Targets (issue #3): suite ≥ 50× faster than the reference calls; 1,000 bootstrap resamples < 2 s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """FairVLMed-like test split: 4 attributes with imbalanced groups, tied scores."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    attrs = {
        "race": rng.choice(3, n, p=[0.08, 0.15, 0.77]),
        "gender": rng.choice(2, n, p=[0.56, 0.44]),
        "ethnicity": rng.choice(2, n, p=[0.95, 0.05]),
        "language": rng.choice(3, n, p=[0.92, 0.05, 0.03]),
    }
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 3)
    return y, s, attrs


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from fairbench.metrics import bootstrap, evaluate
    from fairbench.metrics.reference import reference_direct, reference_suite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    y, s, attrs = _data(args.n)

    ours = evaluate(y, s, attrs)  # warm-up + agreement check
    for ref in (reference_suite(y, s, attrs), reference_direct(y, s, attrs)):
        for name, a in ours.attributes.items():
            for k in ("es_auc", "es_acc", "dpd", "eod", "group_auc_std", "group_auc_range"):
                assert abs(getattr(a, k) - ref[name][k]) < 1e-12, (name, k)

    t_ours = _best_of(lambda: evaluate(y, s, attrs), 20)
    t_ref = _best_of(lambda: reference_suite(y, s, attrs), 3)
    t_direct = _best_of(lambda: reference_direct(y, s, attrs), 3)
    bootstrap(y, s, attrs, n_resamples=10)  # warm-up
    t_boot = _best_of(lambda: bootstrap(y, s, attrs, n_resamples=args.resamples), 3)

    print(f"suite, {args.n} samples × {len(attrs)} attributes (best of repeats):")
    print(f"  fairbench.metrics.evaluate               {1e3 * t_ours:9.2f} ms")
    print(f"  fairlearn MetricFrame + sklearn          {1e3 * t_ref:9.2f} ms   "
          f"({t_ref / t_ours:.0f} × slower)")
    print(f"  direct per-group sklearn/fairlearn calls {1e3 * t_direct:9.2f} ms   "
          f"({t_direct / t_ours:.0f} × slower; target ≥ 50 ×)")
    print(f"bootstrap, {args.resamples} resamples of the full suite:")
    print(f"  fairbench.metrics.bootstrap              {t_boot:9.3f} s    (target < 2 s)")


if __name__ == "__main__":
    main()
