"""Studies: the shipped Fair-MoE study is exactly the paper's tables; `run/table/report --study` plan, show and
flag the same runs; bad study files are one-line errors; `--dry-run` estimates the time left from timings."""

from __future__ import annotations

import io
import json
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.estimate import estimate_remaining
from fairbench.study import (
    DEFAULT_SELECT,
    StudyError,
    load_study,
    missing_runs,
    parse_study,
    study_jobs,
)
from tests.helpers import write_run

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "results" / "paper" / "fair-moe-tables.csv"
TINY_STUDY = textwrap.dedent("""
    description = "two methods, race, two seeds"
    methods = ["clip", "fairclip"]
    archs = ["tiny"]
    attributes = ["race"]
    seeds = 2
    select = "test"

    [set]
    epochs = 1
    max_steps_per_epoch = 2
    batch_size = 16
""")
# The same jobs as the study's seed 0, by hand.
BY_HAND = ["--method", "clip,fairclip", "--attr", "race", "--seeds", "1", "--select", "test", "--epochs", "1",
           "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_shipped_paper_study_is_exactly_the_papers_tables():
    from fairbench.registry import get_method, load_plugins

    load_plugins()
    study = load_study("fair-moe-paper")
    assert study.select == "test" and study.protocol == "fairbench" and study.dataset == "fairvlmed"
    jobs = study_jobs(study)
    paper = pd.read_csv(PAPER)
    # Every (method, arch, attribute) the paper reports, and nothing else; attribute-free methods (clip) train
    # once per seed and are evaluated on every attribute.
    reported = {(r.method, r.arch, r.attribute if get_method(r.method).uses_attribute else None)
                for r in paper.itertuples()}
    planned = {(j.method, j.arch, j.attribute) for j in jobs}
    assert planned == reported
    assert sorted({j.seed for j in jobs}) == [0, 1, 2] and len(jobs) == 3 * len(reported) == 294
    assert set(study.attributes) == set(paper.attribute)


@pytest.mark.slow
def test_a_study_runs_then_table_shows_exactly_its_rows_and_flags_missing_seeds(dataset, tmp_path):
    study = tmp_path / "tiny-study.toml"
    study.write_text(TINY_STUDY)
    out = tmp_path / "out"
    dry = invoke("run", "--study", study, "--data", dataset, "--out", out, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "4 job(s) (dry run): 4 pending" in dry.output
    assert "protocol fairbench, select test" in dry.output
    assert "no finished run to time yet for: clip tiny (2), fairclip tiny (2)" in dry.output

    # Seed 0 by hand (the same config, so the study will skip it), and runs outside the study: another selection
    # rule, method and seed.
    by_hand = invoke("run", *BY_HAND, "--data", dataset, "--out", out)
    assert by_hand.exit_code == 0, by_hand.output
    write_run(out, "clip", "tiny", None, 0, selection="val")
    write_run(out, "fairmoe", "tiny", "race", 0, selection="test")
    write_run(out, "clip", "tiny", None, 5, selection="test")

    table = invoke("table", "--study", study, "--out", out, "--format", "long-csv")
    assert table.exit_code == 0, table.output
    assert "clip tiny -: 1 of 2 seeds" in table.stderr and "fairclip tiny race: 1 of 2 seeds" in table.stderr
    assert "study tiny-study: 2 of 4 runs finished (protocol fairbench, select test)" in table.stderr
    frame = pd.read_csv(io.StringIO(table.stdout))
    assert set(frame["selection"]) == {"test"} and set(frame["method"]) == {"clip", "fairclip"}
    assert set(frame["seed"]) == {0} and set(frame["dataset"]) == {"synthetic"}

    # The estimate: each pending job costs the mean total_s of finished runs with its method and arch.
    records = [json.loads(p.read_text()) for p in out.rglob("result.json")]
    timed = {m: [r["timings"]["total_s"] for r in records if (r["method"], r["arch"]) == (m, "tiny")]
             for m in ("clip", "fairclip")}
    minutes = sum(sum(t) / len(t) for t in timed.values()) / 60
    dry = invoke("run", "--study", study, "--data", dataset, "--out", out, "--dry-run")
    assert f"estimate: {minutes:.1f} minutes of CPU time for 2 of 2 pending job(s)" in dry.output
    n_timed = len(timed["clip"]) + len(timed["fairclip"])
    assert n_timed == 4 and f"mean timings.total_s of {n_timed} finished run(s)" in dry.output  # clip: 3 (any rule)

    done = invoke("run", "--study", study, "--data", dataset, "--out", out)
    assert done.exit_code == 0, done.output
    assert "2 trained, 2 skipped" in done.output
    table = invoke("table", "--study", study, "--out", out, "--format", "long-csv")
    assert table.exit_code == 0 and "missing" not in table.stderr
    frame = pd.read_csv(io.StringIO(table.stdout))
    assert set(frame["seed"]) == {0, 1} and set(frame["selection"]) == {"test"}
    report = invoke("report", "--study", study, "--out", out, "--no-plots", "--compare", "none",
                    "--to", tmp_path / "r.html")
    assert report.exit_code == 0, report.output
    assert "(4 runs" in report.stdout  # the study's four, not the run outside it


@pytest.mark.parametrize("command", [["table"], ["report", "--no-plots"]])
def test_unknown_study_is_a_one_line_error(tmp_path, command):
    r = invoke(*command, "--study", "fair-moe-papr", "--out", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip() == ("error: unknown study 'fair-moe-papr'; use one of fair-moe-paper, or pass a path "
                                "to a .toml study file")


@pytest.mark.parametrize("text,message", [
    ("methods = [\"clip\"\n", r"not valid TOML \(.*line"),
    ("methods = [\"clip\"]\nseed = 3\n", r"unknown key 'seed'; known keys: name, description"),
    ("archs = [\"tiny\"]\n", r"no 'methods' list"),
    ("methods = [\"clip\"]\nseeds = 0\n", r"'seeds' must be at least 1"),
    ("methods = [\"clip\"]\nseeds = [0, 0]\n", r"'seeds' must list distinct non-negative integers"),
    ("methods = [\"clip\"]\nselect = \"best\"\n", r"'select' must be one of 'val', 'test', 'dto', got 'best'"),
    ("methods = \"clip\"\n", r"'methods' must be a non-empty list of names"),
    ("methods = [\"clip\"]\n[set]\nlr = [1, 2]\n", r"set.lr must be a single value"),
])
def test_malformed_study_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(StudyError, match=message):
        load_study(path)
    r = invoke("run", "--study", path, "--out", tmp_path / "o", "--dry-run")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and str(path) in r.output


@pytest.mark.parametrize("args,message", [
    (["--study", "fair-moe-paper", "--method", "clip"], "--study fair-moe-paper fixes methods, archs, attributes, "
                                                        "seeds, protocol, select and dataset; drop --method"),
    (["--study", "fair-moe-paper", "--protocol", "fairclip"], "drop --protocol"),
    (["--study", "fair-moe-paper", "--arch", "tiny", "--seeds", "1"], "drop --arch, --seeds"),
    (["--study", "nowhere/x.toml"], "study file nowhere/x.toml not found"),
    ([], "give --method (e.g. --method clip,fairclip) or --study (e.g. --study fair-moe-paper)"),
])
def test_study_option_errors(tmp_path, args, message):
    r = invoke("run", *args, "--out", tmp_path, "--dry-run")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_study_keys_and_defaults():
    study = parse_study('methods = ["fairmoe*"]\nseeds = [4, 7]\n[set]\nfair_lambda = 1e-5\ncheckpoint = true\n',
                        source="x.toml", default_name="x")
    assert study.name == "x" and study.archs == ("tiny",) and study.attributes is None and study.seeds == (4, 7)
    assert study.dataset is None  # the registry's default dataset
    assert study.protocol == "fairbench" and study.selection_rule == DEFAULT_SELECT
    assert study.overrides == {"fair_lambda": "1e-05", "checkpoint": "true"}
    from fairbench.training.trainer import TrainSettings

    assert DEFAULT_SELECT == TrainSettings.select


def test_missing_runs_count_only_the_studys_runs():
    from fairbench.registry import load_plugins

    load_plugins()
    study = parse_study('methods = ["fairclip"]\nattributes = ["race"]\nseeds = 3\nselect = "test"\n', source="s")

    def rec(seed, rule="test", name="fairvlmed", attribute="race", protocol="fairbench"):
        return {"method": "fairclip", "arch": "tiny", "attribute": attribute, "seed": seed,
                "selection": {"rule": rule}, "dataset": {"name": name, "tag": "synthetic"},
                "config": {"protocol": protocol}}

    records = [rec(0), rec(0), rec(1, rule="val"), rec(2, name="other"), rec(1, attribute="gender"), rec(9),
               rec(2, protocol="fairclip")]
    assert missing_runs(study, records) == ["fairclip tiny race: 1 of 3 seeds"]


def test_estimate_uses_same_method_and_arch_and_says_gpu_hours():
    def job(method, arch):
        return SimpleNamespace(job=SimpleNamespace(method=method, arch=arch))

    records = [{"method": "clip", "arch": "b16", "timings": {"total_s": 3600}, "device": "cuda (H100)"},
               {"method": "clip", "arch": "b16", "timings": {"total_s": 7200}, "device": "cuda (H100)"},
               {"method": "clip", "arch": "l14", "timings": {"total_s": 99999}, "device": "cuda (H100)"}]
    est = estimate_remaining([job("clip", "b16"), job("clip", "b16"), job("fairmoe", "b16")], records)
    assert est.seconds == 2 * 5400 and est.covered == 2 and est.untimed == {("fairmoe", "b16"): 1}
    lines = est.lines(3)
    assert lines[0].startswith("estimate: 3.0 GPU-hours for 2 of 3 pending job(s) (mean timings.total_s of 2 ")
    assert lines[1] == "no finished run to time yet for: fairmoe b16 (1)"
    assert estimate_remaining([], records).lines(0) == ["nothing left to run"]
    short = estimate_remaining([job("clip", "b16")], [{**records[0], "timings": {"total_s": 90}, "device": "cpu"}])
    assert short.lines(1)[0].startswith("estimate: 1.5 minutes of CPU time for 1 of 1 pending job(s)")


def test_a_studys_protocol_is_the_runs_protocol_and_sets_its_selection(dataset, tmp_path):
    study = tmp_path / "released.toml"
    study.write_text('methods = ["clip"]\nprotocol = "fairclip"\nseeds = 1\n')
    dry = invoke("run", "--study", study, "--data", dataset, "--out", tmp_path / "out", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "protocol fairclip, select test" in dry.output  # the fairclip protocol selects by test AUC
    assert "select=test" in dry.output  # and the planned job trains under it
    # What other commands (status) plan from the study names the same run folders as `run --study`.
    planned = load_study(study).request().plan(tmp_path / "out", data=str(dataset))
    listed = re.findall(r"^pending\s+.*?  (\S+)$", dry.output, flags=re.M)
    assert listed == [str(p.run_dir) for p in planned] and len(listed) == 1
    study.write_text('methods = ["clip"]\nprotocol = "fairclp"\n')
    bad = invoke("run", "--study", study, "--data", dataset, "--out", tmp_path / "out", "--dry-run")
    assert bad.exit_code == 2 and "unknown protocol 'fairclp'" in bad.output and str(study) in bad.output
