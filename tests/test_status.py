"""`fairbench status`: each run folder's state from its files alone, totals, and planned jobs without a folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.runs import claims
from fairbench.runs.results import RESULT_SCHEMA

runner = CliRunner()


def _run_dir(out: Path, seed: int) -> Path:
    path = out / "synthetic" / "clip" / "tiny" / "none" / "0123456789" / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"train": {"epochs": 5}}))
    return path


def _claim(run_dir: Path, **fields) -> None:
    now = time.time()
    (run_dir / "claim.json").write_text(json.dumps({"host": "node7", "pid": 4242, "started": now - 60,
                                                    "heartbeat": now - 30, "token": "t", "epoch": 2, **fields}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_every_state_is_told_from_the_files(tmp_path):
    out = tmp_path / "results"
    done = _run_dir(out, 0)
    (done / "result.json").write_text(json.dumps({
        "schema": RESULT_SCHEMA, "method": "clip", "arch": "tiny", "seed": 0, "dataset": {}, "config_hash": "x",
        "selection": {}, "metrics": {"test": {"auc": 0.9, "attributes": {}}}}))
    _claim(_run_dir(out, 1))
    _claim(_run_dir(out, 2), host=claims._HOST, pid_ns=claims._PID_NS, pid=_dead_pid())
    failed = _run_dir(out, 3)
    (failed / "failure.json").write_text(json.dumps({"error": "TrainingDiverged: loss is not finite", "host": "n",
                                                     "at": "2025-01-01T00:00:00+00:00", "epochs_done": 0}))
    interrupted = _run_dir(out, 4)
    (interrupted / "train_state.pt").write_bytes(b"")
    (interrupted / "history.json").write_text(json.dumps([{}, {}, {}]))
    (_run_dir(out, 5) / "result.json").write_text("")
    (out / "synthetic" / "clip" / "tiny" / "none" / "0123456789" / "seed6").mkdir()  # an empty folder: not a run

    r = runner.invoke(app, ["status", "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 7
    by_seed = {int(line.split("seed")[1][0]): line for line in lines[:-1]}
    assert by_seed[0].startswith("done     clip tiny - seed0")
    assert by_seed[1].startswith("running  clip tiny - seed1")
    assert re.search(r"node7 pid 4242, 2/5 epochs, heartbeat 3\d s ago", by_seed[1]), by_seed[1]
    assert by_seed[2].startswith("stale") and "is gone" in by_seed[2] and "a rerun takes it over" in by_seed[2]
    assert by_seed[3].startswith("failed") and "TrainingDiverged: loss is not finite" in by_seed[3]
    assert by_seed[4].startswith("pending") and "interrupted, resuming after epoch 3/5" in by_seed[4]
    assert by_seed[5].startswith("failed") and "not readable JSON" in by_seed[5] and "moves it aside" in by_seed[5]
    assert by_seed[0].endswith("(synthetic/clip/tiny/none/0123456789/seed0)")
    assert lines[-1] == "6 run(s): 1 done, 1 running, 1 stale, 2 failed, 1 pending"

    # The same claim, silent for longer than the timeout, is stale.
    stale = runner.invoke(app, ["status", "--out", str(out)], env={claims.TIMEOUT_ENV: "20"})
    assert "2 stale" in stale.output.splitlines()[-1]


def test_with_job_options_it_lists_planned_runs_without_a_folder(dataset, tmp_path):
    out = tmp_path / "results"
    r = runner.invoke(app, ["status", "--out", str(out), "-m", "clip,fairclip", "-a", "race", "-s", "2",
                            "--data", str(dataset), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [line[9:].split("  ")[0].strip() for line in lines[:-1]] == [
        "clip tiny - seed0", "clip tiny - seed1", "fairclip tiny race seed0", "fairclip tiny race seed1"]
    assert all(line.startswith("pending") and "not started" in line for line in lines[:-1])
    assert lines[-1] == "4 run(s): 4 pending"


def test_a_missing_results_folder_is_a_one_line_error(tmp_path):
    r = runner.invoke(app, ["status", "--out", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "does not exist" in r.output
