"""`fairbench run` as separate processes: killed with SIGKILL and run again (same bytes as a run never killed),
stopped with SIGINT/SIGTERM (one line, 130/143), and two processes on one command (each run trained once)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

# FairCLIP (group batches: the group sampler's state must survive) that sleeps in each step, so that a test can
# catch a run between two epochs.
SLOW_PLUGIN = '''
import os
import time

from fairbench import register_method
from fairbench.registry import get_method


@register_method("slowfairclip", description="test: FairCLIP that sleeps in each step")
class SlowFairCLIP(get_method("fairclip")):
    def loss_terms(self, model, batch, group_batches):
        time.sleep(float(os.environ.get("SLOW_STEP_S", "0")))
        return super().loss_terms(model, batch, group_batches)
'''


@pytest.fixture(scope="module")
def dataset(dataset: Path, tmp_path_factory) -> Path:
    """conftest's shared dataset, with its image/token caches built before processes race for them."""
    from fairbench.registry import load_plugins
    from fairbench.runs.execute import DataCache
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()  # build the image/token caches once, before processes race for them
    options = RunOptions(out=tmp_path_factory.mktemp("unused"), data=str(dataset))
    (planned,) = plan(options, expand_jobs(["clip"], ["tiny"], None, [0]))
    DataCache().get(planned)
    return dataset


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "slow_plugin.py"
    path.write_text(SLOW_PLUGIN)
    return path


def _args(plugin: Path, dataset: Path, out: Path, seeds: int = 1, epochs: int = 3) -> list[str]:
    """`--pretrained none`: a subprocess has not conftest's short pretraining recipe, so the default start would
    pretrain `tiny` with the full recipe first (about a minute); these tests are about the fine-tuning run."""
    return [sys.executable, "-m", "fairbench.cli", "run", "-p", str(plugin), "-m", "slowfairclip", "-a", "race",
            "-s", str(seeds), "--data", str(dataset), "--out", str(out), "--epochs", str(epochs),
            "--set", "max_steps_per_epoch=2", "--set", "batch_size=16", "--set", "group_batch_size=4",
            "--set", "threads=1", "--pretrained", "none"]


def _env(step_s: float) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "SLOW_STEP_S": str(step_s),
            "COLUMNS": "200"}


def _start(args: list[str], step_s: float) -> subprocess.Popen:
    return subprocess.Popen(args, env=_env(step_s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=_env(0), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _wait_for_state(proc: subprocess.Popen, out: Path) -> Path:
    deadline = time.time() + 300
    while time.time() < deadline:
        found = list(out.rglob("train_state.pt"))
        if found:
            return found[0].parent
        assert proc.poll() is None, "the run ended before its first epoch's state was saved: " + proc.stderr.read()
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no training state within 300 s")


def _numbers(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {"metrics": result["metrics"], "selection": result["selection"], "epochs": result["epochs_trained"],
            **{p.name: p.read_bytes() for p in sorted(run_dir.glob("predictions_*.csv"))}}


@pytest.mark.slow
def test_sigkill_after_the_first_epoch_then_the_same_command_gives_the_same_bytes(dataset, plugin, tmp_path):
    _run(_args(plugin, dataset, tmp_path / "ref"))
    (ref_dir,) = (p.parent for p in (tmp_path / "ref").rglob("result.json"))

    out = tmp_path / "out"
    proc = _start(_args(plugin, dataset, out), step_s=0.4)
    run_dir = _wait_for_state(proc, out)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.communicate()
    assert not (run_dir / "result.json").exists() and (run_dir / "claim.json").exists()

    again = _run(_args(plugin, dataset, out))
    assert re.search(r"resuming slowfairclip tiny race seed0 after epoch [12]", again.stdout), again.stdout
    log = (run_dir / "claims.log").read_text()
    assert f"took over from {os.uname().nodename} pid {proc.pid} (process {proc.pid} on this host is gone)" in log
    assert _numbers(run_dir) == _numbers(ref_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["claims.log", "config.json", "history.json",
                                                         "predictions_test.csv", "predictions_val.csv", "result.json"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_sigint_and_sigterm_say_in_one_line_where_the_run_resumes(dataset, plugin, tmp_path, sig, code):
    out = tmp_path / "out"
    args = _args(plugin, dataset, out)
    proc = _start(args, step_s=0.4)
    run_dir = _wait_for_state(proc, out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = [line for line in (stdout + stderr).splitlines() if "interrupted" in line]
    assert len(lines) == 1, stdout + stderr
    name = signal.Signals(sig).name
    assert re.fullmatch(rf"interrupted \({name}\): slowfairclip tiny race seed0: it resumes at epoch [23]/3 from "
                        rf"the state saved in {re.escape(str(run_dir))}; continue with: fairbench run .*", lines[0])
    assert lines[0].endswith(" ".join(args[4:]))  # the command as given (no shell quoting needed here)
    assert not (run_dir / "claim.json").exists()  # released: a rerun need not wait for anything
    assert f"released (interrupted by {name}" in (run_dir / "claims.log").read_text()


@pytest.mark.slow
def test_two_processes_on_one_command_train_each_run_once(dataset, plugin, tmp_path):
    out = tmp_path / "out"
    args = _args(plugin, dataset, out, seeds=4, epochs=1)
    procs = [_start(args, step_s=0.5) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, stdout + stderr
    run_dirs = sorted(p.parent for p in out.rglob("result.json"))
    assert len(run_dirs) == 4
    trainers = []
    for run_dir in run_dirs:
        starts = re.findall(r" pid (\d+) training from epoch 1", (run_dir / "claims.log").read_text())
        assert len(starts) == 1, (run_dir / "claims.log").read_text()
        trainers.append(int(starts[0]))
    assert set(trainers) == {p.pid for p in procs}  # both took part
    summaries = [stdout.splitlines()[-1] for stdout, _ in outputs]
    trained = [int(re.search(r"(\d+) trained", s).group(1)) for s in summaries]
    assert sum(trained) == 4, summaries
    assert any("running elsewhere" in stdout for stdout, _ in outputs)


def test_a_signal_during_a_state_save_waits_for_the_save():
    from fairbench.runs.interrupt import Interrupted, catch_signals, uninterrupted

    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(Interrupted) as stopped, catch_signals():
        with uninterrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now
            steps.append("saved")
        steps.append("next epoch")
    assert steps == ["saved"] and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
