"""Resume from the per-epoch training state: a run stopped after any epoch and run again ends with the same
metrics and byte-identical prediction files as a run never stopped; the state goes once result.json exists
(unless keep_state); a result.json that does not load is set aside and the run trained again; file modes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fairbench.runs.execute import execute
from tests.helpers import toy_train

FAST = {"max_steps_per_epoch": "2", "batch_size": "16"}
TIMING_KEYS = ("train_seconds", "eval_seconds")


def _planned(dataset: Path, out: Path, method: str, epochs: int = 3, **overrides: str):
    from fairbench.registry import load_plugins
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    options = RunOptions(out=out, data=str(dataset), epochs=epochs, overrides={**FAST, **overrides})
    (job,) = plan(options, expand_jobs([method], ["tiny"], ["race"], [0]))
    return job


class Crash(Exception):
    """Stands in for a process dying mid-run."""


def _crash_at(epoch: int):
    def hook(record):
        if record["epoch"] == epoch:
            raise Crash(f"stopped at epoch {epoch}")
    return hook


def _comparable(run_dir: Path) -> dict:
    """Everything of a run that must not depend on whether it was interrupted (not timings, dates, hosts)."""
    result = json.loads((run_dir / "result.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    return {
        "metrics": result["metrics"], "selection": result["selection"], "epochs": result["epochs_trained"],
        "config": result["config"], "warnings": result["warnings"],
        "history": [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history],
        "predictions": {p.name: p.read_bytes() for p in sorted(run_dir.glob("predictions_*.csv"))},
    }


@pytest.mark.slow  # two runs: the reference and the stopped one
@pytest.mark.parametrize(("method", "overrides", "epochs", "crash_epoch"), [
    ("clip", {}, 1, 0),  # stopped in the first epoch's bookkeeping: nothing saved yet, trains from the start
    ("fairclip", {"group_batch_size": "4", "checkpoint": "true"}, 2, 1),  # group sampler, selected weights saved
])
def test_a_run_stopped_after_an_epoch_resumes_to_identical_results(dataset, tmp_path, method, overrides, epochs,
                                                                   crash_epoch):
    reference = _planned(dataset, tmp_path / "ref", method, epochs=epochs, **overrides)
    assert execute(reference, log=lambda _: None).status == "done"

    planned = _planned(dataset, tmp_path / "out", method, epochs=epochs, **overrides)
    with pytest.raises(Crash):
        execute(planned, log=lambda _: None, on_epoch=_crash_at(crash_epoch))
    run_dir = planned.run_dir
    assert not (run_dir / "claim.json").exists()  # released on the way out
    assert json.loads((run_dir / "failure.json").read_text())["epochs_done"] == crash_epoch
    assert (run_dir / "train_state.pt").exists() == (crash_epoch > 0)
    if method == "fairclip":
        _check_state(planned, crash_epoch)
    logged: list[str] = []
    assert execute(planned, log=logged.append).status == "done"
    if crash_epoch:
        assert f"resuming {planned.label()} after epoch {crash_epoch}" in logged[0]
    assert _comparable(run_dir) == _comparable(reference.run_dir)
    if overrides.get("checkpoint"):
        mine, ref = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (run_dir, reference.run_dir))
        assert mine.keys() == ref.keys() and all(torch.equal(mine[k], ref[k]) for k in ref)
    assert not (run_dir / "train_state.pt").exists() and not (run_dir / "failure.json").exists()
    log = (run_dir / "claims.log").read_text()
    assert log.count("training from epoch") == 2 and f"training from epoch {crash_epoch + 1}" in log


def _check_state(planned, epochs_done: int) -> None:
    """The state file holds every generator, the optimiser and scheduler, and the selected epoch's weights."""
    from fairbench.runs.state import load_state

    state = load_state(planned.run_dir / "train_state.pt", planned.config_hash)
    assert state.epochs_done == epochs_done and len(state.history) == epochs_done
    assert set(state.rng) >= {"python", "numpy", "torch"} and state.generator.dtype == torch.uint8
    sampler = state.sampler
    assert sampler is not None and sampler["pos"] and set(sampler["pos"]) == set(sampler["order"])
    assert state.optimizer["state"] and state.scheduler["last_epoch"] == 2 * epochs_done  # two steps an epoch
    assert state.best_epoch == 0 and state.best_is_current and state.best_weights is None  # stored once, as model
    history = json.loads((planned.run_dir / "history.json").read_text())
    assert len(history) == epochs_done  # history.json never counts an epoch the state lacks


def test_keep_state_keeps_the_file_leaves_the_hash_alone_and_files_get_the_ordinary_mode(dataset, tmp_path):
    from fairbench.runs.state import StateError, load_state

    plain = _planned(dataset, tmp_path / "out", "clip", epochs=1)
    kept = _planned(dataset, tmp_path / "out", "clip", epochs=1, keep_state="true")
    assert kept.config_hash == plain.config_hash and kept.run_dir == plain.run_dir
    assert "keep_state" not in kept.config["train"] and kept.settings.keep_state
    umask = 0o002  # group-writable: neither mkstemp's 0600 nor a hard-coded 0644
    old = os.umask(umask)
    try:
        assert execute(kept, log=lambda _: None).status == "done"
    finally:
        os.umask(old)
    state_file = kept.run_dir / "train_state.pt"
    assert load_state(state_file, kept.config_hash).epochs_done == 1
    with pytest.raises(StateError, match="not 0123456789"):
        load_state(state_file, "0123456789")
    assert "keep_state" not in json.loads((kept.run_dir / "config.json").read_text())["train"]
    files = [p for p in kept.run_dir.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {"result.json", "config.json", "history.json", "predictions_val.csv",
                                       "train_state.pt", "claims.log"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o664) for p in files}


@pytest.mark.slow
def test_an_unreadable_result_is_set_aside_and_the_run_trained_again(dataset, tmp_path):
    planned = _planned(dataset, tmp_path / "out", "clip", epochs=1)
    assert execute(planned, log=lambda _: None).status == "done"
    (planned.run_dir / "result.json").write_text('{"schema": "fairbench.result/1"')  # cut short
    (planned.run_dir / "train_state.pt").write_bytes(b"not a state")  # and a state that cannot be resumed from
    assert planned.state() == "invalid"
    logged: list[str] = []
    result = execute(planned, log=logged.append)
    assert result.status == "done" and planned.state() == "done"
    (aside,) = planned.run_dir.glob("result.json.invalid-*")
    assert aside.read_text() == '{"schema": "fairbench.result/1"'
    assert any("did not load" in line and aside.name in line for line in logged)
    assert any("not a readable training state" in line and "from the first epoch" in line for line in logged)


# The trainer alone, on tests/helpers.py's toy CLIP: a run resumed after any epoch must end exactly where an
# uninterrupted one does.

@pytest.mark.parametrize("select", ["val", "test"])
def test_the_trainer_resumed_after_any_epoch_ends_exactly_like_an_uninterrupted_run(tmp_path, select):
    from fairbench.runs.state import load_state, save_state

    keys = [0.6, 0.9, 0.7, 0.8, 0.65]  # epoch 1 is selected; later epochs are not the best
    reference = toy_train(select, 5, keys)
    assert reference.best_epoch == 1
    path = tmp_path / "train_state.pt"
    for stop in range(1, 5):
        assert toy_train(select, 5, keys, on_epoch_state=lambda s: save_state(path, s, "h"), stop_after=stop) is None
        state = load_state(path, "h")
        assert state.epochs_done == stop and state.best_is_current == (stop <= 2)  # best: epoch 0, then 1
        resumed = toy_train(select, 5, keys, resume=state)
        assert resumed.best_epoch == reference.best_epoch
        assert np.array_equal(resumed.val_scores, reference.val_scores)
        assert np.array_equal(resumed.test_scores, reference.test_scores)
        assert resumed.state_dict.keys() == reference.state_dict.keys()
        assert all(torch.equal(resumed.state_dict[k], reference.state_dict[k]) for k in reference.state_dict)
        strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]  # noqa: E731
        assert strip(resumed.history) == strip(reference.history)


def test_without_the_generators_a_resume_would_differ(tmp_path):
    """The check above can fail: dropping the saved random state changes the resumed run."""
    from fairbench.runs.state import load_state, save_state

    keys = [0.6, 0.9, 0.7]
    reference = toy_train("val", 3, keys)
    path = tmp_path / "train_state.pt"
    toy_train("val", 3, keys, on_epoch_state=lambda s: save_state(path, s, "h"), stop_after=1)
    state = load_state(path, "h")
    state.rng = {**state.rng, "torch": torch.Generator().manual_seed(99).get_state()}
    resumed = toy_train("val", 3, keys, resume=state)
    assert not all(torch.equal(resumed.state_dict[k], reference.state_dict[k]) for k in reference.state_dict)
