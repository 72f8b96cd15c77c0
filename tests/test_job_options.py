"""One road from options to jobs: `status` plans exactly what `run` ran (any protocol, a study), settings are
resolved once in one documented order and checked against their ranges, and what the user controls is bounded
(seeds, jobs, names) with one-line errors before anything runs."""

from __future__ import annotations

import pickle
import re
import resource
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from tests.helpers import small_synthetic

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("job-options"))


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: ") and "Traceback" not in r.output, r.output
    for needle in needles:
        assert needle in r.output, (needle, r.output)


# ------------------------------------------------------------------ status sees what run made


@pytest.mark.slow
def test_status_shows_the_runs_run_made_under_a_protocol_and_a_study(dataset, tmp_path):
    out = tmp_path / "results"
    jobs = ["--method", "clip", "--seeds", "1", "--data", dataset, "--out", out, *FAST]
    r = invoke("run", *jobs, "--protocol", "fairclip")
    assert r.exit_code == 0, r.output
    (result,) = out.rglob("result.json")
    status = invoke("status", *jobs, "--protocol", "fairclip")
    assert status.exit_code == 0, status.output
    line, total = status.output.splitlines()
    assert line.startswith("done     clip tiny - seed0") and str(result.parent.relative_to(out)) in line
    assert total == "1 run(s): 1 done"
    # Under the default protocol the same options are another run (another config hash), not yet made.
    assert invoke("status", *jobs).output.splitlines()[-1] == "1 run(s): 1 pending"

    # A study with the same jobs and settings names the same run folder: `run --study` skips it, `status --study`
    # shows it done.
    study = tmp_path / "released.toml"
    study.write_text(textwrap.dedent("""
        methods = ["clip"]
        protocol = "fairclip"
        seeds = 1
        [set]
        epochs = 1
        max_steps_per_epoch = 2
        batch_size = 16
    """))
    where = ["--data", dataset, "--out", out]
    again = invoke("run", "--study", study, *where)
    assert again.exit_code == 0 and "0 trained, 1 skipped" in again.output, again.output
    by_study = invoke("status", "--study", study, *where)
    assert by_study.output.splitlines() == status.output.splitlines(), by_study.output


def test_status_plans_a_shipped_study_as_run_would(dataset, tmp_path):
    out = tmp_path / "results"
    status = invoke("status", "--study", "fair-moe-paper", "--data", dataset, "--out", out)
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert lines[-1] == "294 run(s): 294 pending" and len(lines) == 295
    dry = invoke("run", "--study", "fair-moe-paper", "--data", dataset, "--out", out, "--dry-run")
    planned = re.findall(r"^pending\s+.*?  (\S+)$", dry.output, flags=re.M)
    shown = [re.search(r"\((\S+)\)$", line).group(1) for line in lines[:-1]]
    assert [str(Path(p).relative_to(out)) for p in planned] == shown


def test_status_refuses_job_options_with_a_study(tmp_path):
    r = invoke("status", "--study", "fair-moe-paper", "--protocol", "fairclip", "--out", tmp_path)
    _one_line_error(r, "--study fair-moe-paper fixes", "drop --protocol")


# ------------------------------------------------------------------ settings: one order, one place, ranges


def test_settings_resolve_in_the_documented_order_and_the_job_carries_them(dataset, tmp_path):
    from fairbench.models.archs import CLIP_FROZEN
    from fairbench.registry import load_plugins
    from fairbench.runs.request import request_from_options
    from fairbench.training.settings import resolve_train_settings

    load_plugins()
    # arch (tiny: AdamW 1e-3, batch 64) → protocol (fairclip: select test, ties later) → --set → --epochs/--select
    s = resolve_train_settings("tiny", "fairclip", {"lr": "0.5", "ties": "earlier"}, epochs=3, select="val")
    assert (s.optimizer, s.batch_size, s.lr, s.epochs, s.select, s.ties) == ("adamw", 64, 0.5, 3, "val", "earlier")
    assert s.precision == "fp16-weights" and s.frozen == CLIP_FROZEN  # the protocol's, towers-only: the arch's
    planned = request_from_options(methods=["clip"], seeds=1, protocol="fairclip",
                                   overrides={"lr": "0.5"}).plan(tmp_path, data=str(dataset), epochs=3)
    (job,) = planned
    assert job.settings == resolve_train_settings("tiny", "fairclip", {"lr": "0.5"}, epochs=3)
    assert job.config["train"]["lr"] == 0.5 and job.config["train"]["epochs"] == 3
    assert pickle.loads(pickle.dumps(job)).settings == job.settings  # what a worker process or SLURM task gets


@pytest.mark.parametrize("setting,needle", [
    ("max_steps_per_epoch=-1", "trainer setting max_steps_per_epoch must be an integer ≥ 0 (0 = full epochs), got -1"),
    ("threads=-1", "trainer setting threads must be an integer from 0 (torch's own count) to 1024, got -1"),
    ("lr=-1", "trainer setting lr must be a finite number > 0, got -1.0"),
    ("lr=nan", "trainer setting lr must be a finite number > 0, got nan"),
    ("eps=0", "trainer setting eps must be a finite number > 0, got 0.0"),
    ("betas=1,0.5", "trainer setting betas must be two numbers in [0, 1)"),
    ("epochs=0", "trainer setting epochs must be an integer ≥ 1, got 0"),
    ("batch_size=1", "trainer setting batch_size must be an integer ≥ 2"),
    ("weight_decay=-0.1", "trainer setting weight_decay must be a finite number ≥ 0"),
    ("device_data=2", "trainer setting device_data must be a fraction between 0 and 1"),
    ("select=best", "trainer setting select: unknown selection rule 'best'"),
])
def test_a_setting_out_of_range_is_one_line_before_anything_runs(dataset, tmp_path, setting, needle):
    out = tmp_path / "results"
    r = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", out, "--set", setting)
    _one_line_error(r, needle)
    assert not out.exists()


def test_no_reader_outside_the_results_writer_reads_the_config_train_block():
    """Every reader of a job's trainer settings uses the resolved `TrainSettings`; only fairbench.runs.results, which
    writes and reads the run folder's format, touches config["train"]."""
    readers = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "fairbench").rglob("*.py"))
               if 'config["train"]' in p.read_text()]
    assert readers == ["fairbench/runs/results.py"]


# ------------------------------------------------------------------ bounds on what the user controls


def test_a_billion_seeds_is_one_line_and_plans_nothing(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = invoke("run", "--method", "clip", "--seeds", "1000000000", "--dry-run", "--out", tmp_path)
    _one_line_error(r, "--seeds 1000000000: at most 1000 seeds (0..999) per command",
                    "planning holds every job in memory")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"planning a billion seeds grew the process by {grown_mb:.0f} MB"
    _one_line_error(invoke("run", "--method", "clip", "--seeds", "5000000000", "--out", tmp_path),
                    "--seeds 5000000000: at most 1000 seeds")
    _one_line_error(invoke("status", "--method", "clip", "--seeds", "5000000000", "--out", tmp_path),
                    "--seeds 5000000000: at most 1000 seeds")


@pytest.mark.parametrize("seeds,needle", [
    ("1000000000", "'seeds' = 1000000000: at most 1000 seeds (0..999) per command"),
    ("[0, 4294967296]", "'seeds' must list distinct non-negative integers below 2**32"),
    (str(list(range(1001))), "'seeds': 1001 seeds, but at most 1000 per command"),
])
def test_a_study_with_too_many_seeds_is_one_line(tmp_path, seeds, needle):
    study = tmp_path / "big.toml"
    study.write_text(f'methods = ["clip"]\nseeds = {seeds}\n')
    for command in (["run", "--dry-run"], ["status"], ["table"]):
        _one_line_error(invoke(*command, "--study", study, "--out", tmp_path), str(study), needle)


def test_too_many_jobs_is_one_line_counted_before_any_job_is_made(tmp_path):
    r = invoke("run", "--method", "fairmoe*", "--arch", "tiny,b16", "--seeds", "1000", "--dry-run", "--out", tmp_path)
    _one_line_error(r, "80,000 jobs (10 method(s) × 2 arch(s)", "more than the 20,000 one command may plan")


# ------------------------------------------------------------------ names stay names, run folders stay inside --out


@pytest.mark.parametrize("name,ok", [("fairmoe-no-fol", True), ("ViT-B-16-quickgelu", True), ("a.b_c", True),
                                     ("..", False), ("../../../x", False), ("a/b", False), (".hidden", False),
                                     ("", False), ("x" * 65, False), ("hf-hub:org/model", False), ("a b", False)])
def test_one_naming_rule(name, ok):
    from fairbench.registry import InvalidNameError, check_name

    if ok:
        assert check_name("method", name) == name
    else:
        with pytest.raises(InvalidNameError, match=r"is not a valid name: names become folder names under --out"):
            check_name("method", name)


def test_a_plugin_method_named_to_escape_out_is_refused_naming_the_plugin(tmp_path):
    bad = tmp_path / "escape.py"
    bad.write_text(textwrap.dedent('''
        from fairbench import Method, register_method

        @register_method("../../../x")
        class Escape(Method):
            pass
    '''))
    r = invoke("run", "--plugin", bad, "--method", "clip", "--dry-run", "--out", tmp_path / "results")
    _one_line_error(r, f"plugin file '{bad}' failed to import", "method name '../../../x' is not a valid name",
                    "1 to 64 letters, digits")
    assert not (tmp_path / "results").exists()
    assert not any((folder / "x" / "tiny").exists() for folder in (tmp_path, *list(tmp_path.parents)[:3]))


def test_a_dataset_whose_attribute_would_escape_out_is_refused(tmp_path):
    bad = tmp_path / "escape_data.py"
    bad.write_text(textwrap.dedent('''
        from fairbench import Dataset, register_dataset

        @register_dataset("escape-data")
        class Escape(Dataset):
            attributes = {"../up": {0: "a", 1: "b"}}
    '''))
    _one_line_error(invoke("data", "list", "--plugin", bad), "attribute name '../up' is not a valid name")


def test_an_arch_that_would_escape_out_is_one_line(tmp_path):
    _one_line_error(invoke("run", "--method", "clip", "--arch", "../up", "--dry-run", "--out", tmp_path),
                    "arch name '../up' is not a valid name")


def test_a_run_folder_is_always_inside_out(tmp_path):
    from fairbench.registry import InvalidNameError
    from fairbench.runs.results import run_dir

    path = run_dir(tmp_path, "synthetic", "clip", "tiny", None, "0123456789", 3)
    assert path.resolve().is_relative_to(tmp_path.resolve())
    for parts in (("..", "clip", "tiny"), ("synthetic", "../x", "tiny"), ("synthetic", "clip", "a/b")):
        with pytest.raises(InvalidNameError):
            run_dir(tmp_path, *parts, None, "0123456789", 0)
