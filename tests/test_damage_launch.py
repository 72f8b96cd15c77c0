"""Damage suite, launching: a broken plugin, job or disk is one line naming it; one failed job never stops the others.

Before (v0.2): a plugin calling sys.exit(0) at import ended the command with exit 0 and no output; under the default
sequential launcher a raising plugin loss or a truncated .safetensors checkpoint printed a traceback and the other
jobs never started; a read-only results folder or cache and a full disk ended in tracebacks; two commands on an
empty cache both generated the synthetic data and both pretrained `tiny`; with --workers, SIGTERM's message said no
run was training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from tests.helpers import small_synthetic, unwritable

FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16", "--pretrained", "none"]
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("damage-launch"))


def invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _fairbench(*args, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairbench.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600, **kwargs)


# ---------------------------------------------------------------- plugins

@pytest.mark.parametrize(("body", "message"), [
    ("import sys\nsys.exit(0)\n", "called sys.exit(0) while being imported; a plugin must only define and register "
                                  "its classes"),
    ("raise SystemExit(3)\n", "called sys.exit(3) while being imported"),
    ("raise ValueError('no config file\\nsecond line')\n", "failed to import: ValueError: no config file"),
])
def test_a_plugin_that_exits_or_crashes_at_import_is_an_error_naming_it(tmp_path, body, message):
    from fairbench.registry import PluginError, load_plugin

    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(body)
    with pytest.raises(PluginError) as err:
        load_plugin(str(plugin))
    assert str(err.value).startswith(f"plugin file {str(plugin)!r} ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_plugin_module_that_crashes_at_import_is_named(tmp_path, monkeypatch):
    from fairbench.registry import PluginError, load_plugin

    (tmp_path / "crashing_plugin_module.py").write_text("raise KeyError('missing setting')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin module 'crashing_plugin_module' failed to import: KeyError"):
        load_plugin("crashing_plugin_module")
    with pytest.raises(PluginError, match=r"plugin module 'no_such_plugin_module' could not be imported"):
        load_plugin("no_such_plugin_module")


@pytest.mark.slow
def test_the_command_ends_with_one_line_and_exit_2_on_a_plugin_calling_sys_exit_0(tmp_path):
    plugin = tmp_path / "exits.py"
    plugin.write_text("import sys\nsys.exit(0)\n")
    done = _fairbench("run", "--plugin", plugin, "--method", "clip", "--out", tmp_path / "out", "--dry-run")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: plugin file {str(plugin)!r} called sys.exit(0) while being imported; a plugin must "
                           "only define and register its classes\n")


# ---------------------------------------------------------------- one failed job never stops the others

def test_the_sequential_launcher_fails_a_raising_job_alone(dataset, tmp_path, monkeypatch):
    """The launcher's contract, without training: execute raising for one job ends that job only."""
    from fairbench.launchers.base import Reporter
    from fairbench.launchers.local import LocalLauncher
    from fairbench.registry import load_plugins
    from fairbench.runs import execute as execute_module
    from fairbench.runs.execute import JobResult
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    jobs = plan(RunOptions(out=tmp_path, data=str(dataset), pretrained=None),
                expand_jobs(["clip"], ["tiny"], None, [0, 1, 2]))

    def fake_execute(planned, **_):
        if planned.job.seed == 1:
            raise RuntimeError("boom\nsecond line")
        return JobResult(planned, "done")

    monkeypatch.setattr(execute_module, "execute", fake_execute)
    finished: list = []

    class Collect(Reporter):
        def job_finished(self, result):
            finished.append(result)

    results = LocalLauncher().launch(jobs, Collect())  # one worker: every job in this process
    assert [r.status for r in results] == ["done", "failed", "done"] and finished == results
    assert results[1].message.startswith("RuntimeError: boom (at test_damage_launch.py:")


RAISING_LOSS = textwrap.dedent('''
    from fairbench import get_method, register_method


    @register_method("test-raising-loss", description="test: its loss raises at the first step")
    class RaisingLoss(get_method("clip")):
        def loss_terms(self, model, batch, group_batches):
            raise RuntimeError("loss exploded on purpose")
''')


@pytest.mark.slow
def test_a_raising_loss_fails_its_job_with_one_line_and_a_failure_json_and_the_others_train(dataset, tmp_path):
    plugin = tmp_path / "raising_loss.py"
    plugin.write_text(RAISING_LOSS)
    out = tmp_path / "out"
    r = invoke("run", "--plugin", plugin, "--method", "test-raising-loss,clip", "--seeds", "1", "--data", dataset,
               "--out", out, *FAST)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = r.output.splitlines()
    (failed,) = [line for line in lines if line.startswith("failed test-raising-loss tiny - seed0: ")]
    assert failed.endswith(f"RuntimeError: loss exploded on purpose (at {plugin.name}:8)")
    assert any(line.startswith("done clip tiny - seed0") for line in lines)
    assert "1 trained, 0 skipped (already done), 1 failed" in r.output
    assert "1 run(s) failed (why: failure.json in each folder" in r.output
    (failure,) = out.rglob("failure.json")
    assert json.loads(failure.read_text())["error"] == "RuntimeError: loss exploded on purpose"
    assert "test-raising-loss" in str(failure) and len(list(out.rglob("result.json"))) == 1


def test_a_truncated_safetensors_checkpoint_is_one_line_before_any_job(dataset, tmp_path):
    import torch
    from safetensors.torch import save_file

    from fairbench.models import create_backbone

    checkpoint = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in create_backbone("tiny", pretrained=None).model.state_dict().items()},
              str(checkpoint))
    checkpoint.write_bytes(checkpoint.read_bytes()[:-1000])
    r = invoke("run", "--method", "clip,fairclip", "--attr", "race", "--seeds", "1", "--data", dataset, "--out",
               tmp_path / "out", "--pretrained", checkpoint)
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert r.output.startswith(f"error: cannot read checkpoint {checkpoint} (SafetensorError: ")
    assert r.output.strip().endswith("it is truncated or damaged, copy it again")
    assert not (tmp_path / "out" / "synthetic").exists()  # no run folder was made
    torch.manual_seed(0)  # (keeps later tests' generator state independent of this one)


# ---------------------------------------------------------------- read-only and full disks

def test_a_read_only_results_folder_is_one_line_naming_it(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with unwritable(out) as how:
        r = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", out, *FAST)
    assert r.exit_code == 2 and "Traceback" not in r.output, (how, r.output)
    reason = "not permitted (immutable?)" if how == "chattr +i" else "permission denied"
    assert r.output.strip() == f"error: cannot write {out}: {reason}; make it writable or choose another --out"


def test_a_results_path_under_a_file_is_one_line(dataset, tmp_path):
    (tmp_path / "file").write_text("")
    r = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", tmp_path / "file" / "out", *FAST)
    assert r.exit_code == 2 and r.output.strip() == (f"error: cannot use {tmp_path / 'file' / 'out'}: a part of the "
                                                     "path is a file, not a folder; choose another --out")


def test_a_read_only_empty_cache_is_one_line_naming_it(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    with unwritable(cache) as how:
        r = invoke("run", "--method", "clip", "--out", tmp_path / "out", "--dry-run",
                   env={"FAIRBENCH_CACHE": str(cache)})
    assert r.exit_code == 2 and "Traceback" not in r.output, (how, r.output)
    reason = "not permitted (immutable?)" if how == "chattr +i" else "permission denied"
    assert r.output.strip() == (f"error: cannot write {cache / 'synthetic'}: {reason}; make it writable or choose "
                                "another $FAIRBENCH_CACHE")


@pytest.mark.slow
def test_a_full_disk_fails_the_job_with_one_line_naming_the_file(dataset, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past 256 KB (EFBIG, as a full disk refuses with ENOSPC; the same
    code path): the training state is the first file that large. Works as root, unlike a small mounted disk."""
    import resource

    cache = tmp_path / "cache"
    warm = invoke("run", "--method", "clip", "--seeds", "1", "--data", dataset, "--out", tmp_path / "warm", *FAST,
                  env={"FAIRBENCH_CACHE": str(cache)})
    assert warm.exit_code == 0, warm.output

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    out = tmp_path / "out"
    done = _fairbench("run", "--method", "clip", "--seeds", "2", "--data", dataset, "--out", out, *FAST,
                      env={"FAIRBENCH_CACHE": str(cache)}, preexec_fn=limit)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("failed clip tiny - seed")]
    assert len(failed) == 2
    for line in failed:
        assert "/train_state.pt: file too large for the file system or the process's file-size limit; free space" \
            in line
    assert len(list(out.rglob("failure.json"))) == 2 and not list(out.rglob("train_state.pt"))


# ---------------------------------------------------------------- concurrent commands on an empty cache

DRIVER = textwrap.dedent('''
    import sys, time
    from fairbench.datasets.fairvlmed import synth
    from fairbench.training import pretrain

    synth.DEFAULTS.update(n_train=64, n_val=32, n_test=32, size=48)
    synth.PRETRAINING.update(n_train=48, n_val=16, n_test=4, size=32)
    pretrain.RECIPE = pretrain.PretrainRecipe(epochs=1, batch_size=16, warmup_steps=0, max_steps_per_epoch=2)
    make, build = synth.make_synthetic, pretrain._build
    synth.make_synthetic = lambda *a, **k: (time.sleep(4), make(*a, **k))[1]  # long enough for both to meet
    pretrain._build = lambda *a, **k: (time.sleep(4), build(*a, **k))[1]
    from fairbench.cli import main
    sys.argv = ["fairbench", *sys.argv[1:]]
    main()
''')


@pytest.mark.slow
def test_two_commands_on_an_empty_cache_generate_and_pretrain_once(tmp_path):
    """Small sizes and a pause in each build (a driver patches them), so both commands meet while it runs."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAIRBENCH_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, str(driver), "run", "--method", "clip", "--seeds", "1", "--epochs", "1",
                               "--set", "max_steps_per_epoch=2", "--set", "batch_size=16", "--out",
                               str(tmp_path / f"out{i}")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    both = "\n".join(outputs)
    started = [line for line in both.splitlines() if line.endswith(" …")]  # a phase's first line (its last: "done")
    for build in ("generating the default synthetic FairVLMed (",
                  "generating the synthetic FairVLMed pretraining set (",
                  "pretraining tiny CLIP on the fairvlmed pretraining set"):
        assert sum(line.startswith(build) for line in started) == 1, (build, outputs)
    assert "waiting for " in both, outputs  # the second command waited for the first one's build
    markers = list((tmp_path / "cache" / "synthetic").glob("fairvlmed-synth-v2-*/fairbench_synthetic.json"))
    assert len(markers) == 2  # the default set and the pretraining set, each once
    assert all(len(list((tmp_path / f"out{i}").rglob("result.json"))) == 1 for i in range(2))


# ---------------------------------------------------------------- SIGTERM with worker processes

HOLD = textwrap.dedent('''
    import os, time
    from pathlib import Path
    from fairbench import get_method, register_method


    @register_method("test-hold", description="test: build() waits, so the job is running when the signal comes")
    class Hold(get_method("clip")):
        def build(self, model):
            Path(os.environ["FAIRBENCH_TEST_HOLD"], f"{os.getpid()}").write_text("")
            time.sleep(300)
            return super().build(model)
''')


@pytest.mark.slow
def test_sigterm_with_workers_names_the_runs_they_were_training(dataset, tmp_path):
    plugin = tmp_path / "hold.py"
    plugin.write_text(HOLD)
    flags = tmp_path / "flags"
    flags.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAIRBENCH_TEST_HOLD": str(flags)}
    proc = subprocess.Popen([sys.executable, "-m", "fairbench.cli", "run", "--plugin", str(plugin), "--method",
                             "test-hold", "--seeds", "2", "--data", str(dataset), "--out", str(tmp_path / "out"),
                             "--workers", "2", *FAST], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(list(flags.iterdir())) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert len(list(flags.iterdir())) == 2, proc.communicate(timeout=30)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert ("interrupted (SIGTERM) while worker processes were training 2 run(s) (test-hold tiny - seed0, "
            "test-hold tiny - seed1); each resumes from its last saved epoch; continue with: fairbench run") in stderr


def test_the_interrupt_message_names_runs_in_worker_processes():
    from fairbench.runs.interrupt import Interrupted

    stop = Interrupted(signal.SIGTERM)
    assert stop.message("fairbench run x") == ("interrupted (SIGTERM) before any run was training; continue with: "
                                               "fairbench run x")
    stop.elsewhere = [f"clip tiny - seed{i}" for i in range(5)]
    assert stop.message("fairbench run x") == (
        "interrupted (SIGTERM) while worker processes were training 5 run(s) (clip tiny - seed0, clip tiny - seed1, "
        "clip tiny - seed2 and 2 more); each resumes from its last saved epoch; continue with: fairbench run x")


def test_a_job_failing_before_its_config_is_written_still_leaves_failure_json(dataset, tmp_path, monkeypatch):
    """Bad data found at load time (after planning) fails each job with one line and a failure.json that
    `fairbench status` reads; v0.2 left no trace in the folder."""
    from fairbench.datasets import DatasetError
    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.launchers.base import Reporter
    from fairbench.launchers.local import run_in_this_process
    from fairbench.registry import load_plugins
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan
    from fairbench.runs.status import run_status

    load_plugins()
    jobs = plan(RunOptions(out=tmp_path, data=str(dataset), pretrained=None),
                expand_jobs(["clip"], ["tiny"], None, [0, 1]))

    message = f"{dataset}/Training/data_00003.npz: unreadable npz, corrupt or truncated; re-copy the file"

    def broken(self, *args, **kwargs):
        raise DatasetError(message)

    monkeypatch.setattr(FairVLMed, "load", broken)
    results = run_in_this_process(jobs, Reporter())
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].message == message
    for job in jobs:
        assert not (job.run_dir / "config.json").exists()
        assert json.loads((job.run_dir / "failure.json").read_text())["error"].startswith("DatasetError: ")
        status = run_status(job.run_dir)
        assert status.state == "failed" and "data_00003.npz: unreadable npz" in status.detail
