"""End to end through the CLI: run → table, skip on rerun, no overwrite on a changed setting, plugins,
and one-line errors for bad input."""

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from tests.helpers import EXPECTED_RUN, PLUGIN_SOURCE

runner = CliRunner()
FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def result_files(out: Path) -> list[Path]:
    return sorted(out.rglob("result.json"))


@pytest.mark.slow
def test_run_two_methods_two_seeds_then_table_then_skip_then_no_overwrite(dataset, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--method", "clip,fairclip", "--attr", "race", "--seeds", "2", "--data", dataset,
               "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    files = result_files(out)
    assert len(files) == 4  # clip × 2 seeds (no attribute) + fairclip/race × 2 seeds
    rec = json.loads(files[0].read_text())
    assert rec["dataset"]["synthetic"] is True and rec["dataset"]["tag"] == "synthetic"
    assert rec["selection"]["rule"] == "val"
    assert set(rec["metrics"]["test"]["attributes"]) == {"race", "gender", "ethnicity", "language"}
    run_dir = files[0].parent
    for name in ("config.json", "history.json", "predictions_val.csv", "predictions_test.csv"):
        assert (run_dir / name).exists(), name
    assert "SYNTHETIC" in r.output

    table = invoke("table", "--out", out, "--attr", "race")
    assert table.exit_code == 0, table.output
    assert "clip" in table.output and "fairclip" in table.output

    compare = invoke("compare", "fairclip", "clip", "--out", out, "--attr", "race", "--resamples", "50")
    assert compare.exit_code == 0, compare.output
    assert "different test samples" not in compare.output  # both seeds share one test set: pooled CI shown

    mtimes = {p: p.stat().st_mtime_ns for p in files}
    again = invoke("run", "--method", "clip,fairclip", "--attr", "race", "--seeds", "2", "--data", dataset,
                   "--out", out, *FAST)
    assert again.exit_code == 0, again.output
    assert sum(line.startswith("skipped ") for line in again.output.splitlines()) == 4
    assert "0 trained, 4 skipped" in again.output
    assert {p: p.stat().st_mtime_ns for p in result_files(out)} == mtimes

    changed = invoke("run", "--method", "fairclip", "--attr", "race", "--seeds", "1", "--data", dataset,
                     "--out", out, *FAST, "--set", "fair_lambda=1e-3")
    assert changed.exit_code == 0, changed.output
    files_after = result_files(out)
    assert len(files_after) == 5
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes  # the earlier runs are untouched


@pytest.mark.parametrize("method", ["clip", "fairclip"])  # fairmoe: in the study test below
@pytest.mark.slow
def test_same_seed_same_numbers(dataset, tmp_path, method):
    scores = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        r = invoke("run", "--method", method, "--attr", "race", "--seeds", "1", "--data", dataset, "--out", out,
                   *FAST)
        assert r.exit_code == 0, r.output
        (f,) = result_files(out)
        scores.append((f.parent / "predictions_test.csv").read_text())
    assert scores[0] == scores[1]


def test_plugin_method_runs_and_is_listed_and_tabled(dataset, tmp_path):
    plugin = tmp_path / "halfclip_plugin.py"
    plugin.write_text(PLUGIN_SOURCE.format(name="halfclip"))
    listed = invoke("methods", "--plugin", plugin)
    assert listed.exit_code == 0 and "halfclip" in listed.output
    out = tmp_path / "results"
    r = invoke("run", "--method", "halfclip", "--plugin", plugin, "--seeds", "1", "--data", dataset, "--out", out,
               *FAST, "--set", "weight=0.25")
    assert r.exit_code == 0, r.output
    (f,) = result_files(out)
    rec = json.loads(f.read_text())
    assert rec["method"] == "halfclip" and rec["config"]["method_settings"] == {"weight": 0.25}
    table = invoke("table", "--out", out)
    assert table.exit_code == 0 and "halfclip" in table.output


@pytest.mark.parametrize("args,pattern", [
    (["--method", "fairclp"], r"unknown method 'fairclp'.*Did you mean 'fairclip'"),
    (["--method", "clip", "--arch", "vit-huge-nope"], r"unknown arch 'vit-huge-nope'"),
    (["--method", "clip", "--set", "lamda=1"], r"--set lamda: no method in this run nor the trainer has"),
    (["--method", "clip", "--set", "novalue"], r"--set 'novalue' is not key=value"),
    (["--method", "fairclip", "--set", "fair_lambda=abc"], r"fair_lambda.*expects a float, got 'abc'"),
    (["--method", "fairclip", "--attr", "age"], r"unknown attribute 'age'"),
    (["--method", "clip", "--select", "best"], r"--select: unknown selection rule 'best'.* Use one of val, test"),
])
def test_bad_options_fail_with_one_line(args, pattern, tmp_path):
    r = invoke("run", *args, "--out", tmp_path / "o", "--dry-run")
    assert r.exit_code == 2, r.output
    assert re.search(pattern, r.output), r.output
    assert "Traceback" not in r.output


def test_dataset_that_is_not_fairvlmed(tmp_path):
    (tmp_path / "notdata").mkdir()
    r = invoke("run", "--method", "clip", "--seeds", "1", "--data", tmp_path / "notdata", "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "Training" in r.output and "Traceback" not in r.output


def test_dry_run_expands_attributes_for_attribute_methods(tmp_path):
    r = invoke("run", "--method", "clip,fairclip", "--seeds", "2", "--dry-run", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "10 job(s)" in r.output  # clip: 2 seeds; fairclip: 4 attributes × 2 seeds


def test_nan_loss_stops_with_message_and_keeps_history(dataset, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", out, "--epochs", "2",
               "--set", "batch_size=16", "--set", "lr=1e30")
    assert r.exit_code == 1, r.output
    assert "not finite" in r.output
    assert not result_files(out)
    assert list(out.rglob("config.json"))


@pytest.mark.slow
def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from fairbench.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_select_test_is_labelled_everywhere(dataset, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", out, "--select", "test",
               "--epochs", "2", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16")
    assert r.exit_code == 0, r.output
    assert "TEST AUC" in r.output
    (f,) = result_files(out)
    rec = json.loads(f.read_text())
    assert rec["selection"]["rule"] == "test" and "TEST" in rec["selection"]["label"]
    history = json.loads((f.parent / "history.json").read_text())
    assert all("test_auc" in h for h in history)
    best = max(range(len(history)), key=lambda i: history[i]["test_auc"])
    assert rec["selection"]["epoch"] == best
    table = invoke("table", "--out", out)
    assert table.exit_code == 0 and re.search(r"test", table.output, re.I)


@pytest.mark.slow
def test_val_selection_never_scores_test_per_epoch(dataset, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", out, "--epochs", "2",
               "--set", "max_steps_per_epoch=2", "--set", "batch_size=16")
    assert r.exit_code == 0, r.output
    (f,) = result_files(out)
    history = json.loads((f.parent / "history.json").read_text())
    assert all("test_auc" not in h for h in history)
    rec = json.loads(f.read_text())
    assert rec["selection"]["epoch"] == max(range(2), key=lambda i: history[i]["val_auc"])


@pytest.mark.slow
def test_whole_fairmoe_study_runs_through_the_cli(dataset, tmp_path):
    """`--method 'fairmoe*'` expands to every Fair-MoE variant. This is the one place each variant trains: each
    lands in the ablation table with the loss terms and MoE layers its ablation leaves, a dotted `--set` reaches
    all of them, and fairmoe rerun alone reproduces its study run bit for bit."""
    args = ["--attr", "race", "--seeds", "1", "--data", dataset, "--epochs", "1", "--set", "max_steps_per_epoch=1",
            "--set", "batch_size=16", "--set", "group_batch_size=8", "--set", "moe.capacity=0.5"]
    out = tmp_path / "results"
    r = invoke("run", "--method", "fairmoe*,fairclip-fom", "--out", out, *args)
    assert r.exit_code == 0, r.output
    runs = {json.loads(p.read_text())["method"]: p.parent for p in result_files(out)}
    assert set(runs) == set(EXPECTED_RUN)
    for name, run in runs.items():
        layers, fol_terms = EXPECTED_RUN[name]
        (epoch,) = json.loads((run / "history.json").read_text())
        assert set(epoch["train"]) == {"loss", "contrastive", "sinkhorn", *fol_terms}, name
        assert all(math.isfinite(v) for v in epoch["train"].values()), name
        assert {key.split("/")[1] for key in epoch if key.startswith("moe/")} == layers, name
        settings = json.loads((run / "result.json").read_text())["config"]["method_settings"]
        assert settings["moe"]["capacity"] == 0.5 and settings["group_batch_size"] == 8, name
    no_text = json.loads((runs["fairmoe-no-text-moe"] / "result.json").read_text())["config"]["method_settings"]
    assert no_text["moe"]["towers"] == ["image"] and no_text["fol"]["ei"] is None  # the form's value: 1
    table = invoke("table", "--out", out, "--layout", "ablation")
    assert table.exit_code == 0, table.output
    for name in runs:
        assert name in table.output

    alone = invoke("run", "--method", "fairmoe", "--out", tmp_path / "alone", *args)
    assert alone.exit_code == 0, alone.output
    (f,) = result_files(tmp_path / "alone")
    assert (f.parent / "predictions_test.csv").read_text() == (runs["fairmoe"] / "predictions_test.csv").read_text()
