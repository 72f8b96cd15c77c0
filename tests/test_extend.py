"""The README's "Extend it" examples for a metric, a launcher, a table layout and an arch are real: each is one file,
loaded like any plugin, and shows up where the README says (run, table, compare, --help)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.registry import REGISTRIES, load_plugin
from tests.helpers import small_synthetic

ROOT = Path(__file__).resolve().parents[1]
WIDE = {"COLUMNS": "400"}  # help text on one line per option
FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.fixture()
def plugin(tmp_path):
    """Write the README block that calls `marker` to a file and load it as a plugin; every registration made during
    the test is undone afterwards, so no other test sees the plugin's metric, layout, launcher or arch."""
    registries = list(REGISTRIES.values())
    for registry in registries:
        registry.load_builtins()
    saved = [dict(r.entries) for r in registries]

    def load(marker: str, name: str) -> Path:
        path = tmp_path / name
        path.write_text(readme_block(marker))
        load_plugin(str(path))
        return path

    yield load
    for registry, entries in zip(registries, saved, strict=True):
        registry.entries.clear()
        registry.entries.update(entries)


def _best_group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """The independent reference: sklearn's AUC per group, the largest over groups with both classes."""
    return max(roc_auc_score(labels[groups == g], scores[groups == g]) for g in np.unique(groups)
               if len(np.unique(labels[groups == g])) == 2)


# ------------------------------------------------------------------ a metric


def test_a_metric_in_one_file_is_computed_with_the_suite_and_its_bootstrap(plugin, tmp_path):
    from fairbench.metrics import bootstrap, evaluate, get_metric, metric_names

    plugin("register_metric(", "my_metric.py")
    assert metric_names("attribute")[-1] == "best_group_auc" and get_metric("best_group_auc").arrow == "↑"
    rng = np.random.default_rng(0)
    y, g = rng.integers(0, 2, 300), rng.integers(0, 3, 300)
    s = np.clip(rng.normal(0.4 + 0.2 * y + 0.05 * g, 0.2), 0, 1)
    suite = evaluate(y, s, {"race": g})
    assert suite.attributes["race"].best_group_auc == pytest.approx(_best_group_auc(y, s, g), abs=1e-12)
    assert suite.to_dict()["attributes"]["race"]["best_group_auc"] == suite.attributes["race"].best_group_auc
    lo, hi = bootstrap(y, s, {"race": g}, n_resamples=200).interval("race", "best_group_auc")
    assert lo <= suite.attributes["race"].best_group_auc <= hi
    preds = tmp_path / "p.csv"
    pd.DataFrame({"label": y, "score": s, "race": g}).to_csv(preds, index=False)
    shown = invoke("metrics", preds, env=WIDE)
    assert shown.exit_code == 0 and "best AUC ↑" in shown.output, shown.output


@pytest.mark.slow
def test_a_metric_in_one_file_shows_up_in_table_compare_and_help(plugin, tmp_path):
    path = plugin("register_metric(", "my_metric.py")
    out = tmp_path / "results"
    r = invoke("run", "--plugin", path, "--method", "clip,fairclip", "--attr", "race", "--seeds", "2", "--data",
               small_synthetic(tmp_path), "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    values = {}
    for result in sorted(out.rglob("result.json")):
        rec = json.loads(result.read_text())
        preds = pd.read_csv(result.parent / "predictions_test.csv")
        got = rec["metrics"]["test"]["attributes"]["race"]["best_group_auc"]
        assert got == pytest.approx(_best_group_auc(preds["label"].to_numpy(), preds["score"].to_numpy(),
                                                     preds["race"].to_numpy()), abs=1e-12)
        values.setdefault(rec["method"], []).append(100 * got)

    table = invoke("table", "--out", out, "--attr", "race", "--format", "markdown", "--spread-warn", "0", "--plugin",
                   path)
    assert table.exit_code == 0, table.output
    header = next(line for line in table.output.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.split("|")[4:-1]] == ["ES-AUC ↑", "AUC ↑", "DPD ↓", "EOD ↓", "Worst AUC ↑",
                                                            "ECE gap ↓", "FNR gap ↓", "best AUC ↑"]
    for method, seeds in values.items():
        row = next(line for line in table.output.splitlines() if line.startswith(f"| {method} "))
        cell = row.split("|")[-2].strip().strip("*")
        assert cell == f"{np.mean(seeds):.2f} ± {np.std(seeds, ddof=1):.2f}", (method, cell)

    compare = invoke("compare", "fairclip", "clip", "--out", out, "--attr", "race", "--format", "json",
                     "--resamples", "50", "--plugin", path)
    assert compare.exit_code == 0, compare.output
    (comparison,) = json.loads(compare.stdout)
    compared = {m["metric"]: m for m in comparison["metrics"]}
    assert list(compared) == ["auc", "es_auc", "best_group_auc"]
    assert compared["best_group_auc"]["label"] == "best AUC race"
    assert compared["best_group_auc"]["a"] == pytest.approx(values["fairclip"], abs=1e-9)
    assert compared["best_group_auc"]["bootstrap_per_seed"]  # the paired bootstrap recomputed it

    for command in ("table", "compare"):
        help_text = invoke(command, "--help", env=WIDE).output
        assert "best_group_auc (best AUC)" in help_text, (command, help_text)


# ------------------------------------------------------------------ a launcher


def test_a_launcher_in_one_file_brings_its_options_to_run(plugin, tmp_path):
    plugin("register_launcher(", "my_launcher.py")
    help_text = invoke("run", "--help", env=WIDE).output
    assert "pilot: this process, only the first N pending jobs" in help_text
    assert "--pilot-jobs" in help_text and "Pilot launcher: how many pending jobs to run." in help_text
    data, out = small_synthetic(tmp_path), tmp_path / "results"
    wrong = invoke("run", "--method", "clip", "--data", data, "--out", out, "--pilot-jobs", "2", "--dry-run")
    assert wrong.exit_code == 2 and wrong.output == "error: --pilot-jobs need --launcher pilot\n", wrong.output
    bad = invoke("run", "--method", "clip", "--data", data, "--out", out, "--launcher", "pilot", "--pilot-jobs", "0")
    assert bad.exit_code == 2 and bad.output == "error: --pilot-jobs 0 must be at least 1\n", bad.output
    assert not out.exists()


@pytest.mark.slow
def test_a_launcher_in_one_file_runs_jobs_that_status_and_table_show(plugin, tmp_path):
    path = plugin("register_launcher(", "my_launcher.py")
    data, out = small_synthetic(tmp_path), tmp_path / "results"
    jobs = ["--method", "clip", "--seeds", "2", "--data", data, "--out", out, *FAST]
    pilot = invoke("run", "--plugin", path, *jobs, "--launcher", "pilot", "--pilot-jobs", "1")
    assert pilot.exit_code == 0, pilot.output
    assert "left for after the pilot" in pilot.output and len(list(out.rglob("result.json"))) == 1
    status = invoke("status", *jobs)
    assert status.output.splitlines()[-1] == "2 run(s): 1 done, 1 pending", status.output
    rest = invoke("run", *jobs)  # the same jobs with the default launcher: the pilot's run is skipped
    assert rest.exit_code == 0 and "1 trained, 1 skipped" in rest.output, rest.output
    assert "clip" in invoke("table", "--out", out).output
    # The command line loads the plugin before it builds `run`: its options are in --help (and accepted).
    env = {**os.environ, "FAIRBENCH_PLUGINS": str(path), "PYTHONPATH": str(ROOT), "COLUMNS": "400"}
    cli = subprocess.run([sys.executable, "-m", "fairbench.cli", "run", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert cli.returncode == 0 and "--pilot-jobs" in cli.stdout, cli.stderr


# ------------------------------------------------------------------ a table layout


def _write_runs(out: Path) -> dict[tuple[str, str], list[float]]:
    """Finished runs of two methods × 3 seeds (result.json as `fairbench run` writes it, scored by the suite); returns
    method/attribute → the seeds' DPD."""
    from fairbench.files import write_json_atomic
    from fairbench.metrics import evaluate
    from fairbench.runs.results import RESULT_SCHEMA, config_hash, run_dir

    rng = np.random.default_rng(1)
    dpd: dict[tuple[str, str], list[float]] = {}
    for method, strength in (("clip", 0.1), ("fairclip", 0.3)):
        config = {"method": method, "arch": "tiny", "protocol": "fairbench"}
        for seed in range(3):
            y = rng.integers(0, 2, 200)
            attrs = {"race": rng.integers(0, 3, 200), "gender": rng.integers(0, 2, 200)}
            scores = np.clip(0.5 + strength * (y - 0.5) + rng.normal(0, 0.2, 200) + 0.05 * attrs["race"], 0, 1)
            suite = evaluate(y, scores, attrs).to_dict()
            folder = run_dir(out, "synthetic", method, "tiny", None, config_hash(config), seed)
            folder.mkdir(parents=True)
            write_json_atomic(folder / "result.json", {
                "schema": RESULT_SCHEMA, "method": method, "arch": "tiny", "attribute": None, "seed": seed,
                "dataset": {"name": "fairvlmed", "tag": "synthetic", "synthetic": True}, "config": config,
                "config_hash": config_hash(config), "selection": {"rule": "val", "label": "best validation AUC"},
                "metrics": {"val": suite, "test": suite}})
            for attr in attrs:
                dpd.setdefault((method, attr), []).append(suite["attributes"][attr]["dpd"])
    return dpd


def test_a_layout_in_one_file_shows_up_in_table_and_help(plugin, tmp_path):
    path = plugin("register_layout(", "my_layout.py")
    out = tmp_path / "results"
    dpd = _write_runs(out)
    assert "gaps: DPD and EOD per attribute as columns, one table each" in invoke("table", "--help", env=WIDE).output
    r = invoke("table", "--out", out, "--layout", "gaps", "--format", "markdown", "--spread-warn", "0", "--plugin",
               path)
    assert r.exit_code == 0, r.output
    titles = [line for line in r.output.splitlines() if line.startswith("### ")]
    assert len(titles) == 2 and "Gaps layout · DPD" in titles[0] and "Gaps layout · EOD" in titles[1]
    first = r.output.split("### ")[1]
    header = next(line for line in first.splitlines() if line.startswith("| method"))
    assert [c.strip() for c in header.split("|")[4:-1]] == ["DPD race ↓", "DPD gender ↓"]
    for method in ("clip", "fairclip"):
        row = next(line for line in first.splitlines() if line.startswith(f"| {method} "))
        cells = [c.strip().strip("*") for c in row.split("|")[4:-1]]
        for cell, attr in zip(cells, ("race", "gender"), strict=True):
            seeds = 100 * np.array(dpd[(method, attr)])
            assert cell == f"{seeds.mean():.2f} ± {seeds.std(ddof=1):.2f}"
    for fmt in ("terminal", "latex", "csv"):
        assert invoke("table", "--out", out, "--layout", "gaps", "--format", fmt).exit_code == 0
    unknown = invoke("table", "--out", out, "--layout", "gap")
    assert unknown.exit_code == 2 and "unknown layout 'gap'. Did you mean 'gaps'?" in unknown.output


# ------------------------------------------------------------------ an arch


def test_an_arch_in_one_file_plans_with_its_own_defaults(plugin, tmp_path):
    from fairbench.models import get_arch

    path = plugin("register_arch(", "my_arch.py")
    assert get_arch("b32").inputs().image_size == 224
    assert "b32" in invoke("list", "archs").output
    r = invoke("run", "--plugin", path, "--arch", "b32", "--method", "clip", "--seeds", "1", "--data",
               small_synthetic(tmp_path), "--out", tmp_path / "results", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "clip b32 - seed0" in r.output and "batch=64" in r.output and "lr=1e-05" in r.output
