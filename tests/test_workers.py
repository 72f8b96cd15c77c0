"""The local multi-process launcher: jobs really run side by side, give the sequential run's numbers byte for
byte, see only their GPU, and a failing or crashing job fails alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.launchers.workers import WorkerSlot, error_line, worker_slots

STEPS = ["--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]
FAST = ["--epochs", "2", *STEPS]  # parallel = sequential across epochs
ONE_EPOCH = ["--epochs", "1", *STEPS]  # tests of where a job runs or how it fails need no second epoch
RENDEZVOUS_ENV = "FAIRBENCH_TEST_RENDEZVOUS"

# Test methods. `test-rv-clip` and `test-rv-fairclip` train exactly as `clip` and `fairclip`, but with
# $FAIRBENCH_TEST_RENDEZVOUS set their build() is a barrier: it leaves a file named after its process and waits
# until a second process has left one, so it passes only when two jobs run at once; the file records what the
# process saw (its GPU, torch threads). `test-raise` and `test-crash` fail in build(): by an exception, and by
# killing their process.
PLUGIN = textwrap.dedent('''
    import json, os, time
    from pathlib import Path

    import torch
    from fairbench import get_method, register_method


    def rendezvous():
        if "{env}" not in os.environ:
            return
        folder = Path(os.environ["{env}"])
        seen = {{"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads()}}
        (folder / f"{{os.getpid()}}.json").write_text(json.dumps(seen))
        deadline = time.time() + float(os.environ.get("{env}_TIMEOUT", "120"))
        while len(list(folder.glob("*.json"))) < 2:
            if time.time() > deadline:
                raise RuntimeError("no second job arrived: jobs did not run at the same time")
            time.sleep(0.05)


    for base in ("clip", "fairclip"):
        class Rendezvous(get_method(base)):
            def build(self, model):
                rendezvous()
                return super().build(model)

        register_method(f"test-rv-{{base}}", description=f"test: {{base}} behind a two-process barrier")(Rendezvous)


    @register_method("test-raise", description="test: build() raises")
    class Raise(get_method("clip")):
        def build(self, model):
            raise RuntimeError("boom on purpose")


    @register_method("test-crash", description="test: build() kills its process")
    class Crash(get_method("clip")):
        def build(self, model):
            os._exit(3)
''').format(env=RENDEZVOUS_ENV)
RV_JOBS = ["--method", "test-rv-clip,test-rv-fairclip", "--attr", "race", "--seeds", "1"]


@pytest.fixture()
def plugin(tmp_path) -> Path:
    path = tmp_path / "worker_test_methods.py"
    path.write_text(PLUGIN)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def outputs(out: Path) -> dict[str, object]:
    """Per run: the prediction files' bytes and result.json's metrics and selected epoch (timings differ)."""
    found = {}
    for result in sorted(out.rglob("result.json")):
        rel = str(result.parent.relative_to(out))
        record = json.loads(result.read_text())
        found[rel] = {"metrics": record["metrics"], "selection": record["selection"],
                      "val": (result.parent / "predictions_val.csv").read_bytes(),
                      "test": (result.parent / "predictions_test.csv").read_bytes()}
    return found


@pytest.fixture(scope="module")
def side_by_side(dataset, tmp_path_factory, one_thread) -> dict:
    """The rendezvous jobs run in this process (no barrier), then by two workers with the barrier on, one per GPU
    slot (`--gpus 3,5`; on a CPU machine the jobs still run): one worker pool serves the overlap, numbers, thread
    and GPU checks below."""
    root = tmp_path_factory.mktemp("side-by-side")
    plugin = root / "worker_test_methods.py"
    plugin.write_text(PLUGIN)
    common = ["--plugin", plugin, *RV_JOBS, "--data", dataset, *FAST]
    sequential = invoke("run", *common, "--out", root / "seq")
    assert sequential.exit_code == 0, sequential.output
    folder = root / "rendezvous"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RENDEZVOUS_ENV, str(folder))  # spawned workers inherit the environment
        parallel = invoke("run", *common, "--out", root / "par", "--gpus", "3,5")
    return {"root": root, "common": common, "parallel": parallel,
            "arrivals": [json.loads(p.read_text()) for p in folder.glob("*.json")]}


@pytest.mark.slow
def test_two_workers_run_two_jobs_at_once_and_give_the_sequential_numbers(side_by_side):
    """Overlap proof: with the barrier on, each job waits in build() for the other to arrive, which only jobs
    running side by side can do; the numbers equal an in-process sequential run's (no barrier) byte for byte."""
    root, common, parallel, arrivals = (side_by_side[k] for k in ("root", "common", "parallel", "arrivals"))
    assert parallel.exit_code == 0, parallel.output
    assert "2 trained, 0 skipped (already done), 0 failed" in parallel.output
    assert len(arrivals) == 2  # two processes, one job each, both inside a job at the same time
    # Workers use the launching process's torch thread count (1 here, set by `one_thread`), as a sequential run:
    # CPU numbers depend on it.
    assert [a["threads"] for a in arrivals] == [1, 1]
    seq, par = outputs(root / "seq"), outputs(root / "par")
    assert len(seq) == 2 and seq == par
    again = invoke("run", *common, "--out", root / "par", "--workers", "2")  # all done: no worker starts
    assert again.exit_code == 0 and "0 trained, 2 skipped" in again.output


def test_the_overlap_proof_fails_one_job_at_a_time(dataset, tmp_path, plugin, monkeypatch):
    """The barrier has teeth: in one process the first job never sees a second one."""
    folder = tmp_path / "rendezvous"
    folder.mkdir()
    monkeypatch.setenv(RENDEZVOUS_ENV, str(folder))
    monkeypatch.setenv(f"{RENDEZVOUS_ENV}_TIMEOUT", "0.5")
    r = invoke("run", "--plugin", plugin, *RV_JOBS, "--data", dataset, "--out", tmp_path / "out", *FAST)
    assert r.exit_code == 1, r.output  # each job failed alone (one line); the command did not crash
    failed = [line for line in r.output.splitlines() if line.startswith("failed")]
    assert failed and all("no second job arrived" in line for line in failed), r.output


@pytest.mark.slow
def test_each_gpu_worker_sees_only_its_gpu(side_by_side):
    """CUDA_VISIBLE_DEVICES is set in each worker before torch loads (on a CPU machine the jobs still run)."""
    assert side_by_side["parallel"].exit_code == 0, side_by_side["parallel"].output
    seen = sorted(a["cuda_visible_devices"] for a in side_by_side["arrivals"])
    assert seen == ["3", "5"]


@pytest.mark.slow
def test_a_failing_and_a_crashing_job_fail_alone(dataset, tmp_path, plugin, one_thread):
    out = tmp_path / "out"
    r = invoke("run", "--plugin", plugin, "--method", "test-crash,test-raise,clip", "--seeds", "1", "--data", dataset,
               "--out", out, *ONE_EPOCH, "--workers", "2")
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    (crash,) = [line for line in lines if line.startswith("failed test-crash tiny - seed0")]
    assert "exited with code 3 while running it" in crash
    (raised,) = [line for line in lines if line.startswith("failed test-raise tiny - seed0")]
    assert "RuntimeError: boom on purpose (at worker_test_methods.py:" in raised
    assert any(line.startswith("done clip tiny - seed0") for line in lines)
    assert "1 trained, 0 skipped (already done), 2 failed" in r.output
    (result,) = out.rglob("result.json")
    assert json.loads(result.read_text())["method"] == "clip"


def test_worker_slots_spread_gpus_and_reject_bad_combinations():
    assert worker_slots(3) == [WorkerSlot(1), WorkerSlot(2), WorkerSlot(3)]
    slots = worker_slots(gpus=["0", "1"], runs_per_gpu=2)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"] and [s.index for s in slots] == [1, 2, 3, 4]
    assert slots[1].label == "worker 2 (GPU 1)"
    for kwargs, message in (({"workers": 2, "gpus": ["0"]}, "not both"), ({"gpus": ["0", "x"]}, "not a GPU index"),
                            ({"gpus": ["0", "0"]}, "lists a GPU twice"), ({"runs_per_gpu": 2}, "needs --gpus"),
                            ({"workers": 0}, "at least 1"), ({"gpus": ["0"], "runs_per_gpu": 0}, "at least 1")):
        with pytest.raises(ValueError, match=message):
            worker_slots(**kwargs)


@pytest.mark.parametrize("args,message", [
    (["--workers", "2", "--gpus", "0"], "give --gpus (one worker per listed GPU, times --runs-per-gpu) or --workers"),
    (["--runs-per-gpu", "2"], "--runs-per-gpu needs --gpus"),
    (["--gpus", "a,b"], "--gpus a,b: a, b is not a GPU index"),
])
def test_bad_worker_options_are_one_line_errors(tmp_path, args, message):
    r = invoke("run", "--method", "clip", "--out", tmp_path, "--dry-run", *args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_error_line_names_type_message_and_place():
    def fail():
        raise ValueError("first line\nsecond line")

    with pytest.raises(ValueError) as info:
        fail()
    assert error_line(info.value) == f"ValueError: first line (at test_workers.py:{fail.__code__.co_firstlineno + 1})"


@pytest.mark.slow
def test_a_spawned_worker_imports_no_torch_before_choosing_its_gpu():
    """What a spawned worker imports before worker_main runs (its module, a pickled job's classes) has no torch."""
    code = ("import sys, pickle, fairbench.launchers.workers, fairbench.runs.jobs, fairbench.runs.execute; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
