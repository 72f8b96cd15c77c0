"""Damage suite, intermediate files: every file fairbench writes and reads back as input to a number carries a
content digest; a damaged one is named in one warning line and rebuilt (caches, pretrained weights, the cached
synthetic set) or set aside with the run restarted (training state), never used.

Each test damages one file the way the v0.2 reliability round did and checks the one-line outcome. Before (v0.2):
the zeroed state finished at another AUC under the same config hash; zeroed images and flipped labels trained and
scored silently; a bit-flipped npz trained from a warm cache.
"""

from __future__ import annotations

import json
import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fairbench.datasets import DatasetError
from fairbench.digests import sidecar, value_digest
from tests.helpers import copy_dataset, load_small, small_synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("damage-files"))


def _zero_tensor_bytes(path: Path, count: int = 64) -> int:
    """Zero `count` bytes at the start of every tensor record of a torch zip file, its zip directory intact (as a
    bad disk block would): torch's reader does not notice. Returns how many records were hit."""
    raw = bytearray(path.read_bytes())
    hit = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if "/data/" not in info.filename or info.file_size < count:
                continue
            name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
                int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            raw[start:start + count] = bytes(count)
            hit += 1
    path.write_bytes(bytes(raw))
    return hit


def _state(weights: torch.Tensor):
    from fairbench.runs.state import TrainState

    return TrainState(epochs_done=1, model={"visual.w": weights, "step": torch.tensor(3)},
                      optimizer={"state": {0: {"exp_avg": torch.ones(2, 3)}}, "param_groups": [{"lr": 1e-5}]},
                      scheduler={"last_epoch": 2}, generator=torch.zeros(8, dtype=torch.uint8),
                      rng={"python": (3, tuple(range(5)), None)}, history=[{"epoch": 0, "val_auc": 0.7}],
                      val_scores=np.linspace(0, 1, 5), test_scores=np.linspace(1, 0, 4))


# ---------------------------------------------------------------- the training state

def test_a_state_with_zeroed_bytes_fails_its_digest(tmp_path):
    from fairbench.runs.state import DamagedState, load_state, save_state

    path = tmp_path / "train_state.pt"
    save_state(path, _state(torch.randn(64, 64)), "abc")
    assert load_state(path, "abc").epochs_done == 1  # intact: loads
    assert _zero_tensor_bytes(path) >= 1
    torch.load(path, weights_only=True)  # what v0.2 did: torch reads the damaged file without a word
    with pytest.raises(DamagedState, match=r"train_state.pt: content does not match its digest \(damaged on disk\)"):
        load_state(path, "abc")


def test_a_state_with_non_finite_weights_is_damaged_and_named(tmp_path):
    from fairbench.runs.state import DamagedState, load_state, save_state

    weights = torch.randn(4, 4)
    weights[1, 2] = math.nan
    weights[3, 3] = math.inf
    path = tmp_path / "train_state.pt"
    save_state(path, _state(weights), "abc")  # a digest-true file: only the finiteness check can catch it
    with pytest.raises(DamagedState) as err:
        load_state(path, "abc")
    assert str(err.value) == f"{path}: weights are not finite (model visual.w: 2 of 16 values)"


def test_a_state_of_the_digestless_format_is_not_resumed_from(tmp_path):
    from fairbench.runs.state import DamagedState, StateError, load_state

    path = tmp_path / "train_state.pt"
    torch.save({"format": "fairbench.train_state/1", "config_hash": "abc", "epochs_done": 1}, path)
    with pytest.raises(StateError, match=r"not a fairbench.train_state/2 file \(it is fairbench.train_state/1, which "
                                         r"carries no content digest\)") as err:
        load_state(path, "abc")
    assert not isinstance(err.value, DamagedState)  # left in place: the next epoch's save replaces it


def test_a_full_disk_while_saving_the_state_names_the_file(tmp_path, monkeypatch):
    """torch turns a failed write into a RuntimeError naming no file; the save names it. /dev/full gives the
    kernel's own ENOSPC."""
    import builtins
    import errno

    from fairbench.runs import state as state_module

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    monkeypatch.setattr(state_module, "open", lambda _path, mode: builtins.open("/dev/full", mode), raising=False)
    path = tmp_path / "train_state.pt"
    with pytest.raises(OSError) as err:
        state_module.save_state(path, _state(torch.randn(256, 256)), "abc")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert not path.exists() and not list(tmp_path.iterdir())  # no half file, no temporary left


def _planned(dataset: Path, out: Path, epochs: int = 2):
    from fairbench.registry import load_plugins
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    options = RunOptions(out=out, data=str(dataset), epochs=epochs, pretrained=None,
                         overrides={"max_steps_per_epoch": "2", "batch_size": "16"})
    (job,) = plan(options, expand_jobs(["clip"], ["tiny"], None, [0]))
    return job


def _comparable(run_dir: Path) -> dict:
    result = json.loads((run_dir / "result.json").read_text())
    return {"metrics": result["metrics"], "selection": result["selection"],
            "predictions": {p.name: p.read_bytes() for p in sorted(run_dir.glob("predictions_*.csv"))}}


class _Crash(Exception):
    pass


def _crash_after_first_epoch(record: dict) -> None:
    if record["epoch"] == 1:
        raise _Crash("killed")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["zeroed bytes", "non-finite weights"])
def test_a_damaged_state_is_set_aside_and_the_run_restarts_to_the_right_numbers(dataset, tmp_path, damage):
    from fairbench.runs.execute import execute
    from fairbench.runs.state import load_state, save_state

    reference = _planned(dataset, tmp_path / "ref")
    assert execute(reference, log=lambda _: None).status == "done"
    planned = _planned(dataset, tmp_path / "out")
    with pytest.raises(_Crash):
        execute(planned, log=lambda _: None, on_epoch=_crash_after_first_epoch)
    state_file = planned.run_dir / "train_state.pt"
    if damage == "zeroed bytes":
        _zero_tensor_bytes(state_file)
    else:  # weights gone to NaN, written with a valid digest
        state = load_state(state_file, planned.config_hash)
        first = next(k for k, v in state.model.items() if v.is_floating_point())
        state.model[first] = torch.full_like(state.model[first], math.nan)
        save_state(state_file, state, planned.config_hash)
    logged: list[str] = []
    assert execute(planned, log=logged.append).status == "done"
    (warning,) = [line for line in logged if "train_state" in line]
    why = "content does not match its digest" if damage == "zeroed bytes" else "weights are not finite"
    assert f"{state_file}: {why}" in warning and "set it aside as train_state.pt.damaged" in warning
    assert "training from the first epoch" in warning and not any(line.startswith("resuming") for line in logged)
    assert _comparable(planned.run_dir) == _comparable(reference.run_dir)  # the right numbers, from epoch 1
    assert not (planned.run_dir / "train_state.pt.damaged").exists()  # removed once the run finished


# ---------------------------------------------------------------- the preprocessing cache

def _entry(cache: Path, split: str = "train") -> Path:
    (entry,) = (cache / "fairvlmed").glob(f"{split}-*-v2")
    return entry


def test_a_zeroed_image_cache_is_rebuilt_not_used(dataset, tmp_path, caplog):
    good = load_small(dataset, tmp_path / "c").train.images.clone()
    (images,) = _entry(tmp_path / "c").glob("images_16.npy")
    arr = np.load(images, mmap_mode="r+")
    arr[:] = 0  # same shape and dtype: v0.2's shape check passed it
    arr.flush()
    del arr
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        again = load_small(dataset, tmp_path / "c")
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line == f"cache {images} is damaged (content does not match its digest ({sidecar(images).name})): rebuilding"
    assert torch.equal(again.train.images, good)


def test_a_missing_image_digest_rebuilds_the_cache(dataset, tmp_path, caplog):
    load_small(dataset, tmp_path / "c")
    (images,) = _entry(tmp_path / "c").glob("images_16.npy")
    sidecar(images).unlink()
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        load_small(dataset, tmp_path / "c")
    assert f"cache {images} is damaged (no content digest" in caplog.text
    assert sidecar(images).is_file()


def test_flipped_cached_labels_are_rebuilt_from_the_data(dataset, tmp_path, caplog):
    first = load_small(dataset, tmp_path / "c")
    meta = _entry(tmp_path / "c", "test") / "meta.json"
    data = json.loads(meta.read_text())
    for row in data["records"]:
        row[0] = 1 - row[0]  # glaucoma label of every test sample
    meta.write_text(json.dumps(data))  # v0.2 checked only the file list
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        again = load_small(dataset, tmp_path / "c")
    assert f"cache {meta} is damaged (content does not match its digest): rebuilding" in caplog.text
    assert torch.equal(again.test.labels, first.test.labels)


def test_a_damaged_token_cache_is_rebuilt(dataset, tmp_path, caplog):
    first = load_small(dataset, tmp_path / "c")
    (tokens,) = _entry(tmp_path / "c").glob("tokens_*.npy")
    np.save(tokens, np.zeros(np.load(tokens).shape, dtype=np.int32))
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        again = load_small(dataset, tmp_path / "c")
    assert f"cache {tokens} is damaged" in caplog.text and torch.equal(again.train.tokens, first.train.tokens)


def test_a_bit_flipped_npz_never_trains_from_a_warm_cache(dataset, tmp_path):
    """The zip directory (names, sizes, CRCs) stays intact, so v0.2's cache key did not change and the cached images
    were used; the cache is keyed by the bytes, so the file is read again and its bad CRC named."""
    root = copy_dataset(dataset, tmp_path / "ds")
    load_small(root, tmp_path / "c")  # warm
    victim = sorted((root / "Training").glob("*.npz"))[3]
    raw = bytearray(victim.read_bytes())
    with zipfile.ZipFile(victim) as zf:
        info = zf.getinfo("slo_fundus.npy")
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2] ^= 0x10
    victim.write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as err:
        load_small(root, tmp_path / "c")
    assert str(err.value).startswith(f"{victim}: unreadable npz, corrupt or truncated (")
    assert str(err.value).endswith("re-copy the file")


def test_an_unchanged_file_is_not_hashed_again(dataset, tmp_path, monkeypatch):
    """The content key costs a stat per unchanged file: SHA-256s are remembered by (size, mtime, ctime, inode)."""
    from fairbench.datasets import cache as cache_module

    load_small(dataset, tmp_path / "c")
    hashed: list[Path] = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "_file_digest", lambda p: hashed.append(p) or real(p))
    load_small(dataset, tmp_path / "c")
    assert hashed == []
    victim = sorted((dataset / "Validation").glob("*.npz"))[0]
    victim.touch()  # same bytes, new mtime/ctime: hashed again, same key, no rebuild
    assert load_small(dataset, tmp_path / "c").fingerprint and hashed == [victim]


# ---------------------------------------------------------------- pretrained weights and the cached synthetic set

def test_damaged_pretrained_weights_are_named_and_built_again(tmp_path, caplog):
    from fairbench.training import pretrain

    target = pretrain.pretraining_target("tiny", "fairvlmed", tmp_path / "c")
    first = pretrain.ensure_pretrained(target, tmp_path / "c")
    raw = bytearray(target.weights.read_bytes())
    raw[-100:] = bytes(100)
    target.weights.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        again = pretrain.ensure_pretrained(target, tmp_path / "c")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{target.weights}: the weights do not match the SHA-256 in provenance.json (damaged): "
                        "building it again"]
    assert again["sha256"] == first["sha256"]  # the same bytes as before the damage (seeded build)


def test_a_damaged_cached_synthetic_set_is_generated_again(tmp_path, caplog):
    from fairbench.datasets.fairvlmed import synth

    params = {"n_train": 8, "n_val": 4, "n_test": 4, "size": 32, "seed": 3}
    path = synth.cached_synthetic(params, tmp_path / "c", "a test set")
    victim = sorted((path / "Test").glob("*.npz"))[0]
    before = victim.read_bytes()
    victim.write_bytes(before[:-10] + bytes(10))
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        assert synth.cached_synthetic(params, tmp_path / "c", "a test set") == path
    assert (f"{path}: 1 file(s) do not match the digests written with them (e.g. Test/{victim.name}): generating it "
            "again") in caplog.text
    assert victim.read_bytes() == before


def test_value_digest_tells_structures_apart():
    base = {"a": [1, 2.0, "x"], "b": torch.arange(4)}
    variants = [{"a": [1, 2.0, "y"], "b": torch.arange(4)}, {"a": [1, 2, "x"], "b": torch.arange(4)},
                {"a": (1, 2.0, "x"), "b": torch.arange(4)}, {"a": [1, 2.0, "x"], "b": torch.arange(4).float()},
                {"a": [1, 2.0, "x"], "b": torch.arange(4).reshape(2, 2)}, {"a": [1, 2.0, "x"], "c": torch.arange(4)}]
    assert value_digest(base) == value_digest({"b": torch.arange(4), "a": [1, 2.0, "x"]})  # key order
    assert len({value_digest(v) for v in variants} | {value_digest(base)}) == len(variants) + 1
