"""The full metric suite with 1,000 bootstrap replicates on 2,000 samples, this checkout against an earlier commit,
measured side by side in one run (the two alternate, so a busy machine slows both alike).

Run: PYTHONPATH=. python bench/bench_metric_suite.py [--before trial] [--rounds 3] [--n 2000] [--resamples 1000]
Target (issue 22): the full suite, new metrics included, stays under 1 s (about 0.5 s before them).
Each side runs in its own Python process (the earlier commit's `fairbench` from `git archive`), best of `--repeats`
per round; the ratio is taken round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from fairbench.metrics import bootstrap, metric_names
n, resamples, repeats = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
y = rng.integers(0, 2, n)
attrs = {"race": rng.choice(3, n, p=[0.08, 0.15, 0.77]), "gender": rng.choice(2, n, p=[0.56, 0.44]),
         "ethnicity": rng.choice(2, n, p=[0.95, 0.05]), "language": rng.choice(3, n, p=[0.92, 0.05, 0.03])}
s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 3)
bootstrap(y, s, attrs, n_resamples=10)
best = float("inf")
for _ in range(repeats):
    t0 = time.perf_counter()
    result = bootstrap(y, s, attrs, n_resamples=resamples)
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"seconds": best, "metrics": len(result.samples),
                  "attribute_metrics": len(metric_names("attribute"))}))
"""


def export(ref: str, target: Path) -> Path:
    """`ref`'s fairbench package, unpacked under `target`."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "fairbench", "methods"], capture_output=True)
    if done.returncode:
        raise SystemExit(f"error: git archive {ref}: {done.stderr.decode().strip()}; pass --before REF (a commit "
                         "before the change to measure)")
    archive = done.stdout
    path = target / "tree.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(target, filter="data")
    return target


def measure(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(args.n), str(args.resamples), str(args.repeats)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="trial", help="git ref of the 'before' side (default: trial)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = export(args.before, Path(tmp))
        print(f"full suite + {args.resamples} bootstrap replicates on {args.n} samples, 4 attributes "
              f"(best of {args.repeats} per round; before = {args.before}, after = this checkout):")
        ratios, afters = [], []
        for r in range(args.rounds):
            b = measure(before, args)
            a = measure(ROOT, args)
            ratios.append(a["seconds"] / b["seconds"])
            afters.append(a["seconds"])
            print(f"  round {r + 1}: before {b['seconds']:.3f} s ({b['metrics']} bootstrapped keys, "
                  f"{b['attribute_metrics']} attribute metrics)   after {a['seconds']:.3f} s ({a['metrics']} keys, "
                  f"{a['attribute_metrics']} attribute metrics)   after/before {ratios[-1]:.2f}")
        print(f"after/before, median of rounds: {sorted(ratios)[len(ratios) // 2]:.2f}; after, best round: "
              f"{min(afters):.3f} s (target < 1 s)")


if __name__ == "__main__":
    main()
