"""Seconds of work lost to a `kill -9` at a random point of a run, when the same command is run again.

    PYTHONPATH=. python bench/bench_resume.py [--tries 5] [--epochs 4] [--n-train 160] [--seed 0]

Times one uninterrupted `fairbench run` (FairCLIP, tiny arch, synthetic data, one seed) as a subprocess, then,
`--tries` times: starts the same command into a fresh folder, SIGKILLs it at a uniformly random moment of the
uninterrupted run's duration, runs the command again to the end, and checks that the metrics and prediction
files equal the uninterrupted run's byte for byte. Per try it prints
  recomputed  training thrown away: from the last saved epoch state (or the start of training) to the kill;
  lost        wall-clock seconds beyond the uninterrupted run: killed run + rerun − uninterrupted run
              (recomputed work plus the rerun's start-up: imports, data, model).
Without the per-epoch state, "recomputed" would be everything trained before the kill.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "fairbench.cli", "run", "-m", "fairclip", "-a", "race", "-s", "1",
            "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--set", "batch_size=16",
            "--set", "threads=1"]


def run_dir_of(out: Path) -> Path | None:
    found = sorted(out.rglob("config.json"))
    return found[0].parent if found else None


def numbers(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {"metrics": result["metrics"], **{p.name: p.read_bytes() for p in run_dir.glob("predictions_*.csv")}}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "FAIRBENCH_CACHE": str(work / "cache")}
    sys.path.insert(0, str(ROOT))
    from fairbench.datasets.fairvlmed.synth import make_synthetic

    data = make_synthetic(work / "data", n_train=args.n_train, n_val=48, n_test=64, size=64)
    timed(command(data, work / "warm", 1), env)  # builds the image cache, warms the page cache
    reference = work / "ref"
    t_ref = timed(command(data, reference, args.epochs), env)
    ref_numbers = numbers(run_dir_of(reference))
    history = json.loads((run_dir_of(reference) / "history.json").read_text())
    epoch_s = sum(h["train_seconds"] + h["eval_seconds"] for h in history) / len(history)
    print(f"uninterrupted run: {t_ref:.1f} s ({args.epochs} epochs of {epoch_s:.1f} s, {args.n_train} training "
          "samples)")

    rng = random.Random(args.seed)
    recomputed, lost = [], []
    for i in range(args.tries):
        out = work / f"try{i}"
        at = rng.uniform(0.05, 0.95) * t_ref
        t0 = time.perf_counter()
        proc = subprocess.Popen(command(data, out, args.epochs), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=at)
            raise SystemExit(f"try {i}: the run finished before the kill at {at:.1f} s; use more --epochs")
        except subprocess.TimeoutExpired:
            proc.kill()
            killed_at = time.time()
            proc.wait()
        t_killed = time.perf_counter() - t0
        run_dir = run_dir_of(out)
        state = run_dir / "train_state.pt" if run_dir else None
        if state is not None and state.exists():
            since = killed_at - state.stat().st_mtime
        elif run_dir is not None:
            since = killed_at - (run_dir / "config.json").stat().st_mtime  # training had started, nothing saved
        else:
            since = 0.0  # killed during start-up: no training lost
        t_rerun = timed(command(data, out, args.epochs), env)
        same = numbers(run_dir_of(out)) == ref_numbers
        recomputed.append(since)
        lost.append(t_killed + t_rerun - t_ref)
        print(f"try {i + 1}: kill -9 at {t_killed:5.1f} s, recomputed {since:5.1f} s, lost {lost[-1]:5.1f} s "
              f"(rerun {t_rerun:.1f} s); results identical: {same}")
        if not same:
            raise SystemExit("resumed results differ from the uninterrupted run")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"mean over {args.tries} tries: recomputed {mean(recomputed):.1f} s, lost {mean(lost):.1f} s "
          f"(max {max(lost):.1f} s); uninterrupted run {t_ref:.1f} s")


if __name__ == "__main__":
    main()
