"""Wall and CPU time of the test suite's configurations, against the targets of a fast test loop.

    PYTHONPATH=. python bench/bench_tests.py                        # quick loop, suite, CI's pytest part
    PYTHONPATH=. python bench/bench_tests.py --configs quick,suite --baseline /tmp/main-export --top 25

Configurations (each one pytest process, run as the README and `.ci/run` run it):
  quick  `pytest -m "not slow" tests`                          target ≤ 60 s idle on 2 cores
  suite  `pytest -m "not slurm" tests`, the demo check skipped  target ≤ 3 min (CI, SLURM, demo variables unset)
  ci     `pytest tests` as `.ci/run` runs it: CI=true (the demo check runs), FAIRBENCH_REQUIRE_SLURM=1 only where
         a SLURM cluster answers (else its tests skip, said below); plus `ruff check .`. `.ci/run` also installs
         the package and Chromium and starts SLURM, which this script leaves out. Target for all of `.ci/run`: 8 min.

Wall time is what the targets are about; on a shared machine it swings with the load, so the script also prints
CPU time (user + sys of the pytest process and every process it waited for: subprocesses, workers) and the load
average before and after. `--baseline PATH` runs the same configurations in another checkout (e.g. `git archive
main | tar -x -C /tmp/main-export`) right after each of this checkout's, and prints the ratios side by side.
`--threads N` runs every test process and its subprocesses with N OpenMP/torch threads (OMP_NUM_THREADS and
FAIRBENCH_TEST_THREADS), so that a checkout whose conftest picks another count is compared at equal work; without
it each checkout runs as its conftest says (this one: one torch thread). `--top N` lists the N tests with the most
CPU time (setup and teardown included) of each run, and for a baseline the same tests' times there. This file is
also the pytest plugin that records them (`-p bench_tests`).

Printed, never asserted: the lead re-measures on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMES_ENV = "FAIRBENCH_BENCH_TEST_TIMES"
TARGETS_S = {"quick": 60.0, "suite": 180.0, "ci": 480.0}
UNSET = ("CI", "FAIRBENCH_DEMO_CHECK", "FAIRBENCH_REQUIRE_SLURM", "PYTEST_ADDOPTS", "OMP_NUM_THREADS",
         "FAIRBENCH_TEST_THREADS")


# ---------------------------------------------------------------- the pytest plugin (runs inside pytest)

_times: dict[str, list[float]] = {}


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Wall and CPU seconds of each test (setup, call, teardown), for --top."""
    wall, cpu = time.perf_counter(), _cpu_s()
    yield
    _times[item.nodeid] = [time.perf_counter() - wall, _cpu_s() - cpu]


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(TIMES_ENV)
    if path:
        Path(path).write_text(json.dumps(_times))


# ---------------------------------------------------------------- the benchmark (runs pytest)

@dataclass
class Measured:
    config: str
    repo: Path
    wall_s: float
    cpu_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    summary: str
    rc: int
    tests: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""


def slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in done.stdout.split())


def command(config: str) -> tuple[list[str], dict[str, str], str]:
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench_tests"]
    env: dict[str, str] = {}
    note = ""
    if config == "quick":
        return [*pytest, "-m", "not slow", "tests"], env, note
    if config == "suite":
        return [*pytest, "-m", "not slurm", "tests"], env, note
    env["CI"] = "true"
    if slurm_up():
        env["FAIRBENCH_REQUIRE_SLURM"] = "1"
    else:
        note = "no SLURM cluster answers here: tests/test_slurm.py's cluster tests skipped"
    return [*pytest, "tests"], env, note


def measure(config: str, repo: Path, threads: int | None) -> Measured:
    cmd, extra, note = command(config)
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), FAIRBENCH_TEST_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "times.json"
        env.update(extra, PYTHONPATH=os.pathsep.join([str(repo), str(Path(__file__).parent)]), HF_HUB_OFFLINE="1")
        env[TIMES_ENV] = str(times)
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        if config == "ci" and done.returncode == 0:
            ruff = subprocess.run(["ruff", "check", "."], cwd=repo, capture_output=True, text=True)
            if ruff.returncode:
                note = (note + "; " if note else "") + "ruff check failed"
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        tests = json.loads(times.read_text()) if times.exists() else {}
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    summary = next((line.strip("= ") for line in reversed(lines) if " in " in line and (
        "passed" in line or "failed" in line or "error" in line)), lines[-1] if lines else "no output")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(config, repo, wall, cpu, load_before, os.getloadavg(), summary, done.returncode, tests, note)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def fmt_s(seconds: float) -> str:
    minutes, s = divmod(seconds, 60)
    return f"{int(minutes)} min {s:4.1f} s" if minutes else f"{s:.1f} s"


def report(m: Measured, label: str) -> None:
    target = TARGETS_S[m.config]
    print(f"{m.config:5} {label:8} wall {fmt_s(m.wall_s):>12} (target {fmt_s(target)}, {m.wall_s / target:4.0%})  "
          f"CPU {fmt_s(m.cpu_s):>12}  load {m.load_before[0]:.2f} → {m.load_after[0]:.2f}  rc {m.rc}  {m.summary}",
          flush=True)
    if m.note:
        print(f"{'':15}{m.note}")


def top(m: Measured, n: int, base: Measured | None) -> None:
    rows = sorted(m.tests.items(), key=lambda kv: -kv[1][1])[:n]
    print(f"  the {len(rows)} tests with the most CPU time ({m.config}, this checkout"
          + (", and the same test id in the baseline" if base else "") + "): wall s / CPU s")
    for nodeid, (wall, cpu) in rows:
        line = f"  {wall:7.1f} {cpu:7.1f}"
        if base is not None:
            old = base.tests.get(nodeid)
            line += f"   baseline {old[0]:7.1f} {old[1]:7.1f}" if old else "   baseline       -       -"
        print(line + f"  {nodeid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="quick,suite,ci", help="of quick, suite, ci")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to measure side by side")
    parser.add_argument("--top", type=int, default=0, help="list the N tests with the most CPU time per run")
    parser.add_argument("--threads", type=int, default=None, help="OpenMP/torch threads of every test process")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's totals and per-test times here")
    args = parser.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(TARGETS_S))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; use of {', '.join(TARGETS_S)}")
    print(f"{os.cpu_count()} CPU(s); uptime: {uptime()}")
    print(f"this checkout: {ROOT}" + (f"; baseline: {args.baseline.resolve()}" if args.baseline else "")
          + (f"; {args.threads} thread(s) per test process" if args.threads else ""), flush=True)
    results: list[tuple[Measured, Measured | None]] = []
    for config in configs:
        mine = measure(config, ROOT, args.threads)
        report(mine, "this")
        base = None
        if args.baseline:
            base = measure(config, args.baseline.resolve(), args.threads)
            report(base, "baseline")
            print(f"{'':15}this / baseline: wall x{mine.wall_s / base.wall_s:.2f}, CPU x{mine.cpu_s / base.cpu_s:.2f}")
        if args.top:
            top(mine, args.top, base)
        results.append((mine, base))
    print(f"uptime: {uptime()}")
    if args.json:
        runs = [m for pair in results for m in pair if m is not None]
        args.json.write_text(json.dumps([{**vars(m), "repo": str(m.repo)} for m in runs], indent=1))
    if any(m.rc not in (0, 5) for m, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
