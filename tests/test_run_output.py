"""What a user sees from `fairbench run` without a terminal, and failures that must leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app

STEPS = ["--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]
FAST = ["--epochs", "2", *STEPS]  # the log test shows both epochs' lines
ONE_EPOCH = ["--epochs", "1", *STEPS]  # what the other tests need of a run
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # subprocesses train on one thread, as this process does (conftest)


@pytest.mark.slow
def test_a_log_file_gets_a_line_per_phase_before_any_run_finishes(dataset, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "FAIRBENCH_CACHE": str(tmp_path / "fresh-cache"), "HF_HUB_OFFLINE": "1",
           "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).parents[1]), **ONE_THREAD}
    cmd = [sys.executable, "-m", "fairbench.cli", "run", "--method", "clip", "--seeds", "2", "--pretrained", "none",
           "--data",
           str(dataset), "--out", str(out), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first = proc.stdout.readline()
    assert not list(out.rglob("result.json")), "nothing was printed before the first run finished"
    assert first.startswith("[1/2] training clip tiny - seed0"), first
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, first + rest
    lines = (first + rest).splitlines()
    text = "\n".join(lines)
    for expected in ("building the 64-px image cache", "clip tiny - seed0 epoch 1/2: loss",
                     "clip tiny - seed0 epoch 2/2: loss", "[2/2] training clip tiny - seed1"):
        assert expected in text, expected
    done = [line for line in lines if line.startswith("done clip tiny")]
    assert len(done) == 2 and all("AUC" in line and line.endswith("SYNTHETIC") for line in done), done
    assert max(len(line) for line in lines) > 80  # long lines stay whole: a file gets no 80-column wrap
    assert lines[-1].startswith("Finished in ") and "2 trained, 0 skipped" in lines[-1]


@pytest.mark.slow
def test_each_phase_line_prints_once_even_with_a_root_log_handler(dataset, tmp_path):
    """open_clip's `logging.info` installs a root handler (basicConfig); phase lines must not print twice."""
    env = {**os.environ, "FAIRBENCH_CACHE": str(tmp_path / "fresh-cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).parents[1]), **ONE_THREAD}
    wrapper = ("import logging, sys; logging.basicConfig(); from fairbench.cli import main; "
               "sys.argv[0] = 'fairbench'; main()")
    cmd = [sys.executable, "-c", wrapper, "run", "--method", "clip", "--seeds", "1", "--pretrained", "none",
           "--data", str(dataset), "--out", str(tmp_path / "out"), *ONE_EPOCH]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "building the 64-px image cache" in proc.stdout
    assert "INFO:" not in proc.stderr and "image cache" not in proc.stderr, proc.stderr


def test_unavailable_weights_fail_before_any_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["run", "--method", "clip", "--arch", "b16", "--seeds", "1", "--out", str(out)])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights 'openai'" in errors[0] and "--pretrained /path" in errors[0]
    assert "ERROR:root" not in r.output and "Traceback" not in r.output
    assert not out.exists()
    missing = CliRunner().invoke(app, ["run", "--method", "clip", "--arch", "b16", "--seeds", "1", "--out",
                                       str(out), "--pretrained", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2 and "nope.pt not found" in missing.output and not out.exists()


def test_cpu_estimate_bounds_a_big_arch_and_stays_quiet_for_tiny():
    from types import SimpleNamespace

    from fairbench.models.backbones import cpu_estimate

    job = SimpleNamespace(n_train=7000, settings=SimpleNamespace(epochs=10, batch_size=32))
    text = cpu_estimate("l14", [job, job])
    assert text.startswith("2 l14 run(s) on a CPU: at least") and "4,380 steps of 16.9 TFLOP" in text
    assert cpu_estimate("tiny", [job]) is None


def _fake_result(run_dir: Path, val_auc: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({
        "schema": "fairbench.result/1", "method": "m", "arch": "tiny", "seed": 0, "dataset": {},
        "config_hash": "h", "selection": {},
        "metrics": {"test": {"auc": 0.5, "attributes": {}}, "val": {"auc": val_auc}}}))


def test_a_seed_far_below_its_siblings_is_called_out(tmp_path):
    from types import SimpleNamespace

    from fairbench.commands.run_display import seed_outlier_warnings

    for seed, auc in ((0, 0.91), (1, 0.93)):
        _fake_result(tmp_path / f"seed{seed}", auc)
    planned = SimpleNamespace(run_dir=tmp_path / "seed2", label=lambda: "fairmoe tiny race seed2")
    low = seed_outlier_warnings(planned, {"metrics": {"val": {"auc": 0.64}}})
    assert len(low) == 1 and "0.640 is 0.280 below the median" in low[0] and "seed0 0.910" in low[0]
    assert seed_outlier_warnings(planned, {"metrics": {"val": {"auc": 0.88}}}) == []


def test_table_names_unfinished_run_folders(dataset, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["run", "--method", "clip", "--seeds", "1", "--data", str(dataset), "--out",
                                 str(out), *ONE_EPOCH])
    assert r.exit_code == 0, r.output
    killed = next(out.rglob("result.json")).parent.parent / "seed7"
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    table = CliRunner().invoke(app, ["table", "--out", str(out)])
    assert table.exit_code == 0
    assert "1 unfinished run folder(s) without result.json" in table.output and str(killed) in table.output
