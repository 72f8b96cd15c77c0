"""`--launcher slurm`: option checks (no cluster needed), and on a real SLURM cluster (`scripts/slurm_local.sh`
starts a one-node one; CI runs it): a 4-job array equals the local launcher byte for byte while one task is
interrupted and requeues itself, and `scancel` of a running task is repaired by a rerun that trains only that run.

The cluster tests skip with the reason when SLURM is absent or down, and fail instead when
FAIRBENCH_REQUIRE_SLURM=1 (CI sets it, so a broken set-up cannot pass as skipped).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from tests.helpers import slurm_unavailable

FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]
RUN = ["run", "--method", "clip,fairclip", "--attr", "race", "--seeds", "2", *FAST]  # 4 jobs
HOLD_PLUGIN = Path(__file__).with_name("slurm_hold_plugin.py")
DEADLINE_S = 240  # a cluster test that takes longer cancels its jobs and fails


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


# --- no cluster needed ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "minutes"), [("90", 90), ("5:30", 6), ("1:30:00", 90), ("2-00", 2880),
                                               ("1-02:03", 1563), ("0-00:00:01", 1)])
def test_slurm_time_formats_become_minutes(text, minutes):
    from fairbench.launchers.slurm import parse_time

    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["1h", "", "0", "1:2:3:4", "-5"])
def test_bad_slurm_time_is_a_one_line_error(text):
    from fairbench.launchers.slurm import parse_time

    with pytest.raises(ValueError, match="--slurm-time"):
        parse_time(text)


def test_slurm_mem_is_checked():
    from fairbench.launchers.slurm import check_mem

    assert check_mem("16g") == "16G" and check_mem("8000") == "8000"
    with pytest.raises(ValueError, match="--slurm-mem '16 GB'"):
        check_mem("16 GB")


def test_slurm_options_need_the_slurm_launcher(dataset, tmp_path):
    r = invoke(*RUN, "--data", dataset, "--out", tmp_path, "--slurm-partition", "gpu", "--no-wait")
    assert r.exit_code == 2
    assert r.output.strip() == "error: --slurm-partition, --no-wait need --launcher slurm"
    assert not any(tmp_path.iterdir())


def test_slurm_launcher_without_submitit_or_sbatch_says_what_to_do(dataset, tmp_path, monkeypatch):
    import sys

    from fairbench.launchers import get_launcher

    monkeypatch.setitem(sys.modules, "submitit", None)  # import fails as if it were not installed
    with pytest.raises(ValueError, match=r"pip install 'fairbench-medvlm\[slurm\]'"):
        get_launcher("slurm")
    monkeypatch.undo()
    pytest.importorskip("submitit")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    r = invoke(*RUN, "--data", dataset, "--out", tmp_path, "--launcher", "slurm")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "sbatch/srun are not on PATH" in r.output and "scripts/slurm_local.sh" in r.output


def _planned(dataset: Path, out: Path):
    from fairbench.registry import load_plugins
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    overrides = {"max_steps_per_epoch": "2", "batch_size": "16"}
    return plan(RunOptions(out=out, data=str(dataset), epochs=1, overrides=overrides),
                expand_jobs(["clip"], ["tiny"], None, [0]))[0]


def test_task_pickles_and_its_checkpoint_requeues_the_same_task(dataset, tmp_path):
    pytest.importorskip("submitit")
    from fairbench.launchers.slurm import SlurmTask

    task = pickle.loads(pickle.dumps(SlurmTask(_planned(dataset, tmp_path), threads=3)))
    assert task.threads == 3 and task.planned.run_dir == _planned(dataset, tmp_path).run_dir
    delayed = task.checkpoint()
    assert delayed.function is task and delayed.args == () and delayed.kwargs == {}


def test_task_trains_with_the_submitters_thread_count(dataset, tmp_path):
    """A task's CPU allocation must not change the numbers: it sets the thread count it was given."""
    import torch

    from fairbench.launchers.slurm import SlurmTask

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        status, _, record = SlurmTask(_planned(dataset, tmp_path), threads=1)()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert status == "done" and record["device"] == "cpu (1 threads)"


class _FakeJob:
    """What `_outcome` reads of a submitit job."""

    def __init__(self, folder: Path, pickled: bool, error: str | None = None) -> None:
        from types import SimpleNamespace

        self.job_id = "7_3"
        self.paths = SimpleNamespace(result_pickle=folder / "7_3_0_result.pkl", stderr=folder / "7_3_0_log.err")
        if pickled:
            self.paths.result_pickle.write_bytes(b"")
        self.error = error

    def result(self):
        import submitit

        if self.error:
            raise submitit.core.utils.FailedJobError(self.error)
        return "done", "", {"metrics": {}}


def test_each_task_outcome_names_what_happened_and_the_log(dataset, tmp_path):
    pytest.importorskip("submitit")
    from fairbench.launchers.slurm import _outcome

    planned = _planned(dataset, tmp_path)
    cancelled = _outcome(planned, _FakeJob(tmp_path, pickled=False), "CANCELLED")
    assert cancelled.status == "failed" and cancelled.message == (
        f"cancelled before it finished (SLURM job 7_3, log {tmp_path / '7_3_0_log.err'}); rerun the same command "
        "to train it again")
    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
             "call last):\n  File \"x.py\", line 1\nValueError: weights missing\n\n----------------------\nYou can "
             "check full logs with 'job.stderr(0)'\nor at paths:\n  - /a/7_3_0_log.err\n  - /a/7_3_0_log.out")
    failed = _outcome(planned, _FakeJob(tmp_path, pickled=True, error=trace), "FAILED")
    assert failed.status == "failed"
    assert failed.message == f"ValueError: weights missing (SLURM job 7_3, log {tmp_path / '7_3_0_log.err'})"
    done = _outcome(planned, _FakeJob(tmp_path, pickled=True), "COMPLETED")
    assert (done.status, done.record, done.planned) == ("done", {"metrics": {}}, planned)



def test_a_requeue_between_two_looks_at_sacct_is_still_reported(dataset, tmp_path, monkeypatch):
    """The task's checkpoint() leaves a line per requeue; the waiting launcher reports it even when sacct showed the
    task RUNNING before and after (it ran, was requeued and ran again between two polls)."""
    pytest.importorskip("submitit")
    from types import SimpleNamespace

    from fairbench.launchers.slurm import SlurmLauncher, SlurmTask

    planned = _planned(dataset, tmp_path)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    SlurmTask(planned, threads=1, requeue_folder=str(tmp_path)).checkpoint()
    assert (tmp_path / "7_3.requeued").read_text().count("\n") == 1

    job = _FakeJob(tmp_path, pickled=False)
    states = iter(["RUNNING", "RUNNING", "COMPLETED"])
    job.watcher = SimpleNamespace(update=lambda: None)
    job.get_info = lambda mode: {"State": next(states), "NodeList": "vm"}
    lines: list[str] = []
    reporter = SimpleNamespace(log=lines.append, job_finished=lambda result: None)
    launcher = SlurmLauncher.__new__(SlurmLauncher)
    launcher.poll_s, launcher.sync_s = 0.0, 0.0
    monkeypatch.setattr("fairbench.launchers.slurm._report_pending_reasons", lambda *args: None)
    launcher._wait([planned], {0: job}, {}, reporter, tmp_path)
    assert [line.split(":")[0] for line in lines] == ["SLURM 7_3 running on vm",
                                                      "SLURM 7_3 requeued (time limit or preemption)"]


# --- on a real cluster ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> None:
    reason = slurm_unavailable()
    if reason:
        if os.environ.get("FAIRBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"FAIRBENCH_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def reference(cluster, dataset, tmp_path_factory) -> Path:
    """The same 4 jobs under the local launcher, in this process."""
    out = tmp_path_factory.mktemp("slurm-reference") / "out"
    r = invoke(*RUN, "--data", dataset, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def outputs(out: Path) -> dict[str, str]:
    """What must be byte-identical between launchers: the prediction files and the metrics of every run."""
    found = {}
    for path in sorted(out.rglob("predictions_*.csv")):
        found[str(path.relative_to(out))] = path.read_text()
    for path in sorted(out.rglob("result.json")):
        record = json.loads(path.read_text())
        found[str(path.relative_to(out))] = json.dumps([record["metrics"], record["device"]], sort_keys=True)
    return found


def listing(out: Path) -> tuple[str, list[dict[str, str]]]:
    """The newest submission's array id and its task → run table."""
    files = sorted((out / "slurm").glob("*_jobs.tsv"), key=lambda p: int(p.name.split("_")[0]))
    assert files, f"no job listing under {out / 'slurm'}"
    with open(files[-1], newline="") as fh:
        return files[-1].name.split("_")[0], list(csv.DictReader(fh, delimiter="\t"))


def wait_until(condition, what: str, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def sacct_states(array_id: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array_id], capture_output=True,
                         text=True, timeout=20).stdout
    rows = [line.split("|") for line in out.splitlines() if "|" in line]
    return {job: (state.split() or ["UNKNOWN"])[0] for job, state in rows}


class Controller(threading.Thread):
    """While `fairbench run --launcher slurm` waits in the main thread, act on the held tasks: send task 1 the
    signal SLURM sends before a time limit or on preemption (SIGUSR2, on which submitit checkpoints and requeues)
    and let it go once submitit has requeued it; cancel task 2 (`scancel`) while it is held mid-run. Past the
    deadline, cancel everything so the run returns and the test fails."""

    def __init__(self, out: Path, hold: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.hold = out, hold
        self.error: BaseException | None = None
        self.scancels: list[subprocess.Popen] = []

    def wait_for_held_process(self, index: str, deadline: float) -> None:
        """Until the held task's process has exited (a one-node test cluster: its pid is on this machine)."""
        pid = (self.hold / f"{index}.held").read_text().strip()
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), f"task {index}'s process to end", deadline)

    def run(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        array_id = None
        try:
            wait_until(lambda: (self.out / "slurm").is_dir() and any((self.out / "slurm").glob("*_jobs.tsv")),
                       "the submission", deadline)
            array_id, _ = listing(self.out)
            pending = {"1", "2"}
            while pending:
                for index in sorted(pending):
                    if (self.hold / f"{index}.held").exists():
                        signal = ["--signal=USR2"] if index == "1" else []
                        # scancel may go on retrying ("can not be altered now") while the signalled job
                        # requeues itself, so it is not waited for here.
                        self.scancels.append(subprocess.Popen(["scancel", *signal, f"{array_id}_{index}"],
                                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                        pending.discard(index)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tasks {sorted(pending)} were never held")
                time.sleep(0.2)
            log = self.out / "slurm" / f"{array_id}_1_0_log.out"
            wait_until(lambda: f"Requeued job {array_id}_1" in log.read_text(), "submitit's requeue", deadline)
            self.wait_for_held_process("1", deadline)
            (self.hold / "1").unlink()
            wait_until(lambda: sacct_states(array_id).get(f"{array_id}_2") == "CANCELLED", "the cancel", deadline)
            # SLURM records the cancel at once but kills the process only after KillWait (submitit ignores the
            # SIGTERM before it); letting it go before then would let it finish.
            self.wait_for_held_process("2", deadline)
        except BaseException as exc:  # reported by the test
            self.error = exc
            if array_id:
                subprocess.run(["scancel", array_id], timeout=20)
        finally:
            for index in ("1", "2"):
                (self.hold / index).unlink(missing_ok=True)
            for process in self.scancels:
                if process.poll() is None:
                    process.kill()
                process.wait()


def _other_thread_count() -> str:
    """A torch thread count a task would start with that is not this process's."""
    import torch

    return str(torch.get_num_threads() + 1)


@pytest.fixture(scope="module")
def interrupted_array(cluster, reference, dataset, tmp_path_factory):
    """The 4 jobs as one array, waited for: task 1 is interrupted mid-run and requeues itself, task 2 is
    cancelled mid-run. Tasks start with another OpenMP thread count than this process's (the submitting environment
    is theirs): only the launcher's fixed thread count makes their numbers equal this process's."""
    root = tmp_path_factory.mktemp("slurm-array")
    out, hold = root / "out", root / "hold"
    hold.mkdir()
    for index in ("1", "2"):  # these tasks wait after training, before writing anything, until let go
        (hold / index).touch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", _other_thread_count())
        patch.setenv("FAIRBENCH_TEST_HOLD", str(hold))
        controller = Controller(out, hold)
        controller.start()
        started = time.monotonic()
        r = invoke(*RUN, "--data", dataset, "--out", out, "--launcher", "slurm", "--plugin", HOLD_PLUGIN)
        controller.join(timeout=30)
    assert controller.error is None, f"{controller.error!r}\n{r.output}"
    array_id, rows = listing(out)
    return {"out": out, "result": r, "array_id": array_id, "rows": rows, "seconds": time.monotonic() - started}


@pytest.mark.slow
@pytest.mark.slurm
def test_job_array_equals_local_launcher_while_a_task_requeues_and_one_is_cancelled(interrupted_array, reference):
    out, r, array_id, rows = (interrupted_array[k] for k in ("out", "result", "array_id", "rows"))
    assert [row["slurm_job"] for row in rows] == [f"{array_id}_{i}" for i in range(4)]
    assert r.exit_code == 1, r.output  # the cancelled run failed
    assert "3 trained, 0 skipped (already done), 1 failed" in r.output
    assert f"failed {rows[2]['run']}: cancelled before it finished (SLURM job {array_id}_2, log {rows[2]['stderr']})" \
        in r.output
    assert f"SLURM {array_id}_1 requeued" in r.output or f"SLURM {array_id}_1 running again" in r.output, r.output
    log = Path(rows[1]["stdout"]).read_text()
    assert log.count("Starting with JobEnvironment") == 2, log  # interrupted, requeued, run again
    assert "this job is preempted" in log and "asking submitit to requeue it" in log
    cancelled = Path(rows[2]["run_dir"])
    assert (cancelled / "config.json").exists() and not (cancelled / "result.json").exists()
    expected = {k: v for k, v in outputs(reference).items() if not (out / k).is_relative_to(cancelled)}
    assert len(expected) == 3 * 3 and outputs(out) == expected


@pytest.mark.slow
@pytest.mark.slurm
def test_rerun_after_a_cancel_submits_only_the_cancelled_run_and_repairs_it(interrupted_array, reference, dataset):
    out, first_rows = interrupted_array["out"], interrupted_array["rows"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", _other_thread_count())
        r = invoke(*RUN, "--data", dataset, "--out", out, "--launcher", "slurm", "--no-wait")
    assert r.exit_code == 0, r.output
    assert "Submitted 1 job(s)" in r.output and "3 skipped (already done)" in r.output
    assert "fairbench status --out" in r.output and "squeue -j" in r.output
    job_id, rows = listing(out)
    assert [row["run"] for row in rows] == [first_rows[2]["run"]]
    deadline = time.monotonic() + DEADLINE_S
    try:
        wait_until(lambda: sacct_states(job_id).get(job_id) not in (None, "PENDING", "RUNNING", "COMPLETING"),
                   "the rerun", deadline)
    finally:
        subprocess.run(["scancel", job_id], timeout=20)
    assert sacct_states(job_id)[job_id] == "COMPLETED"
    assert outputs(out) == outputs(reference)
