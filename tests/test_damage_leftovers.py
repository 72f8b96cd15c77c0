"""Damage suite, shared storage and leftovers.

Before (v0.2): the cached pretraining (folder 0700, weights 0600) and the synthetic data folders ignored the umask;
a kill just after result.json was renamed in left claim.json and train_state.pt in the finished folder for good; a
garbage claim.json showed as "running elsewhere" for 300 s; a result with a non-integer seed or empty test metrics
was skipped by every report ("rerun that run") but never retrained by a rerun; a SLURM request no node could
satisfy waited silently forever.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.runs.results import RESULT_SCHEMA
from tests.helpers import slurm_unavailable, small_synthetic

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("damage-leftovers"))


def _run_folder(out: Path, seed: int = 0) -> Path:
    path = out / "synthetic" / "clip" / "tiny" / "none" / "0123456789" / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"train": {"epochs": 2}}))
    return path


def _result(run_dir: Path, **changes) -> None:
    record = {"schema": RESULT_SCHEMA, "method": "clip", "arch": "tiny", "seed": 0, "dataset": {"tag": "synthetic"},
              "config_hash": "0123456789", "selection": {"rule": "val"}, "files": {},
              "metrics": {"test": {"auc": 0.8, "attributes": {}}}}
    record.update(changes)
    (run_dir / "result.json").write_text(json.dumps(record))


def _status(out: Path) -> list[str]:
    r = runner.invoke(app, ["status", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return r.output.splitlines()


# ---------------------------------------------------------------- claims and finished folders

def test_a_garbage_claim_is_unreadable_at_once_not_running_elsewhere(tmp_path):
    from fairbench.runs.claims import acquire

    run_dir = _run_folder(tmp_path / "out")
    (run_dir / "claim.json").write_text("\x00\x17 not json at all")  # fresh: v0.2 waited out its 300 s age
    (line, _) = _status(tmp_path / "out")
    assert line.startswith("stale    clip tiny - seed0")
    assert "claim by ? pid 0 is dead (its claim file is unreadable (not a claim)); a rerun takes it over" in line
    claim = acquire(run_dir)
    assert "took over from ? pid 0 (its claim file is unreadable (not a claim))" in (run_dir / "claims.log").read_text()
    claim.release()


def test_an_empty_claim_file_is_given_a_moment_then_dead(tmp_path):
    from fairbench.runs.claims import is_dead, read_claim

    run_dir = _run_folder(tmp_path / "out")
    (run_dir / "claim.json").write_text("")  # the no-hard-link fallback may show an empty file for an instant
    assert is_dead(read_claim(run_dir)) == ""
    old = time.time() - 60
    os.utime(run_dir / "claim.json", (old, old))
    assert is_dead(read_claim(run_dir)).startswith("its claim file is empty (written 60 s ago)")


def _dead_claim(run_dir: Path) -> None:
    (run_dir / "claim.json").write_text(json.dumps({"host": "node9", "pid": 4242, "started": 1.0, "heartbeat": 1.0,
                                                    "token": "dead", "epoch": 2}))


def test_status_tidies_a_finished_folder_a_killed_attempt_left_untidy(tmp_path):
    out = tmp_path / "out"
    run_dir = _run_folder(out)
    _result(run_dir)
    _dead_claim(run_dir)
    (run_dir / "train_state.pt").write_bytes(b"x" * 1000)
    (run_dir / "failure.json").write_text("{}")
    (run_dir / ".history.json.abc.tmp").write_text("")
    (line, total) = _status(out)
    assert line.startswith("done     clip tiny - seed0  tidied claim.json, failure.json, train_state.pt, "
                           ".history.json.abc.tmp left by an attempt killed after it finished")
    assert sorted(p.name for p in run_dir.iterdir()) == ["claims.log", "config.json", "result.json"]
    assert "tidied the finished run (claim of node9 pid 4242: no heartbeat" in (run_dir / "claims.log").read_text()
    (again, _) = _status(out)
    assert again.startswith("done     clip tiny - seed0  (")  # nothing left to say


def test_a_kept_state_and_a_live_claim_are_left_alone(tmp_path):
    out = tmp_path / "out"
    kept = _run_folder(out, 0)
    _result(kept, files={"state": "train_state.pt"})  # --set keep_state=true
    _dead_claim(kept)
    (kept / "train_state.pt").write_bytes(b"x")
    live = _run_folder(out, 1)
    _result(live, seed=1)
    now = time.time()
    (live / "claim.json").write_text(json.dumps({"host": "node9", "pid": 4242, "started": now, "heartbeat": now,
                                                 "token": "live"}))  # its owner is between the rename and cleanup
    (live / "train_state.pt").write_bytes(b"x")
    _status(out)
    assert (kept / "train_state.pt").exists() and not (kept / "claim.json").exists()
    assert (live / "train_state.pt").exists() and (live / "claim.json").exists()


def test_a_rerun_tidies_the_finished_folder_it_skips(dataset, tmp_path):
    from fairbench.launchers.base import Reporter
    from fairbench.launchers.local import run_in_this_process
    from fairbench.registry import load_plugins
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    (planned,) = plan(RunOptions(out=tmp_path, data=str(dataset), pretrained=None),
                      expand_jobs(["clip"], ["tiny"], None, [0]))
    planned.run_dir.mkdir(parents=True)
    _result(planned.run_dir)
    _dead_claim(planned.run_dir)
    (planned.run_dir / "train_state.pt").write_bytes(b"x")
    (result,) = run_in_this_process([planned], Reporter())
    assert result.status == "skipped" and not (planned.run_dir / "train_state.pt").exists()
    assert not (planned.run_dir / "claim.json").exists()


# ---------------------------------------------------------------- results a report cannot use are retrained

@pytest.mark.parametrize(("change", "why"), [
    ({"seed": "zero"}, "seed 'zero' is not an integer"),
    ({"seed": 1.5}, "seed 1.5 is not an integer"),
    ({"metrics": {"test": {}}}, "no test metrics"),
    ({"metrics": {"val": {"auc": 0.5}}}, "no test metrics"),
    ({"metrics": {"test": {"accuracy": 0.5}}}, "metrics.test is not a metric-suite object"),
])
def test_a_result_no_report_can_use_is_not_finished(tmp_path, change, why):
    from fairbench.report.load import load_results
    from fairbench.runs.results import CorruptResultError, load_result

    run_dir = _run_folder(tmp_path / "out")
    _result(run_dir, **change)
    with pytest.raises(CorruptResultError) as err:
        load_result(run_dir / "result.json")
    assert str(err.value) == f"{run_dir / 'result.json'}: {why}; delete it or rerun that run"
    loaded = load_results(tmp_path / "out")  # what every report says ...
    assert loaded.records == [] and loaded.problems == [f"skipped {err.value}"]
    (line, _) = _status(tmp_path / "out")  # ... and what a rerun does with it
    assert line.startswith("failed") and "a rerun moves it aside and trains again" in line


@pytest.mark.slow
def test_a_rerun_retrains_a_result_with_a_non_integer_seed(dataset, tmp_path):
    from fairbench.registry import load_plugins
    from fairbench.runs.execute import execute
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    (planned,) = plan(RunOptions(out=tmp_path, data=str(dataset), pretrained=None, epochs=1,
                                 overrides={"max_steps_per_epoch": "2", "batch_size": "16"}),
                      expand_jobs(["clip"], ["tiny"], None, [0]))
    assert execute(planned, log=lambda _: None).status == "done"
    record = json.loads(planned.result_path.read_text())
    planned.result_path.write_text(json.dumps({**record, "seed": "0"}))
    assert planned.state() == "invalid"
    logged: list[str] = []
    assert execute(planned, log=logged.append).status == "done" and planned.state() == "done"
    assert any("did not load; moved it to result.json.invalid-" in line for line in logged)


# ---------------------------------------------------------------- shared caches follow the umask

def _modes(folder: Path) -> set[str]:
    return {oct(stat.S_IMODE(p.stat().st_mode)) for p in [folder, *folder.rglob("*")]}


def test_cached_synthetic_data_and_pretraining_follow_the_umask(tmp_path):
    """Group-writable umask: everything a lab's second user needs is group-writable (v0.2: 0700 folders, 0600
    weights from mkdtemp and safetensors' save_file)."""
    from fairbench.datasets.fairvlmed import synth
    from fairbench.training import pretrain

    old = os.umask(0o002)
    try:
        target = pretrain.pretraining_target("tiny", "fairvlmed", tmp_path / "c")  # generates the pretraining set
        pretrain.ensure_pretrained(target, tmp_path / "c")
    finally:
        os.umask(old)
    (data,) = (tmp_path / "c" / "synthetic").glob("fairvlmed-synth-v2-*")
    folders_and_files = _modes(data) | _modes(target.path)
    assert folders_and_files == {"0o775", "0o664"}, folders_and_files
    assert oct(stat.S_IMODE(target.weights.stat().st_mode)) == "0o664"
    assert synth.is_synthetic(data)


# ---------------------------------------------------------------- the DataCache fails fast on bad data

def test_a_dataset_that_failed_to_load_fails_every_later_job_at_once(dataset, tmp_path, monkeypatch):
    from fairbench.datasets import DatasetError
    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.registry import load_plugins
    from fairbench.runs.execute import DataCache
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    jobs = plan(RunOptions(out=tmp_path, data=str(dataset), pretrained=None),
                expand_jobs(["clip"], ["tiny"], None, [0, 1]))
    calls: list[int] = []

    def broken(self, *args, **kwargs):
        calls.append(1)
        raise DatasetError("a file went missing")

    monkeypatch.setattr(FairVLMed, "load", broken)
    cache = DataCache()
    for job in jobs:
        with pytest.raises(DatasetError, match="a file went missing"):
            cache.get(job)
    assert calls == [1]


# ---------------------------------------------------------------- SLURM requests no node can satisfy

class _Sinfo:
    """Stands in for `sinfo -h -N -o %P|%c|%m|%G`: a 2-CPU, 4 GB node in the default partition, a GPU node."""

    def __call__(self, argv, **_):
        from types import SimpleNamespace

        assert argv[0] == "sinfo"
        return SimpleNamespace(returncode=0, stdout="debug*|2|4000|(null)\ngpu|16|64000|gpu:a100:2(S:0-1)\n")


@pytest.mark.parametrize(("parameters", "message"), [
    ({"cpus_per_task": 100}, "--slurm-cpus-per-task 100: no node of partition debug (the default) has more than 2 "
                             "CPUs (sinfo), so the task would wait forever; ask for at most 2"),
    ({"mem": "16G"}, "--slurm-mem 16G: no node of partition debug (the default) has more than 4000 MB of memory "
                     "(sinfo), so the task would wait forever; ask for at most 4000M"),
    ({"gpus_per_task": 1}, "--slurm-gpus-per-task 1: no node of partition debug (the default) has more than 0 GPU(s) "
                           "(sinfo), so the task would wait forever; pick a partition with GPUs"),
    ({"partition": "gpu", "gpus_per_task": 4}, "--slurm-gpus-per-task 4: no node of partition gpu has more than 2 "
                                               "GPU(s) (sinfo), so the task would wait forever; ask for at most 2"),
    ({"partition": "big"}, "--slurm-partition big: no such partition (sinfo lists debug, gpu)"),
])
def test_a_slurm_request_no_node_can_satisfy_is_refused_before_submitting(parameters, message):
    from fairbench.launchers.slurm import check_request

    with pytest.raises(ValueError) as err:
        check_request(parameters, run=_Sinfo())
    assert str(err.value) == message


def test_a_satisfiable_request_or_no_sinfo_passes():
    from fairbench.launchers.slurm import check_request

    check_request({"cpus_per_task": 2, "mem": "4000", "partition": "gpu", "gpus_per_task": 2}, run=_Sinfo())

    def missing(argv, **_):
        raise FileNotFoundError(argv[0])

    check_request({"cpus_per_task": 100}, run=missing)  # cannot ask: the wait reports pending reasons instead


@pytest.mark.slow
def test_on_a_cluster_100_cpus_per_task_is_refused_before_anything_is_submitted(dataset, tmp_path):
    reason = slurm_unavailable()
    if reason:
        if os.environ.get("FAIRBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"FAIRBENCH_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    r = runner.invoke(app, ["run", "--method", "clip", "--seeds", "1", "--data", str(dataset), "--out", str(tmp_path),
                            "--launcher", "slurm", "--slurm-cpus-per-task", "100"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: --slurm-cpus-per-task 100: no node of partition ")
    assert not (tmp_path / "slurm").exists()
