"""Preprocessing cache: holds exactly CLIP's transform of each image, is rebuilt when a file changes
(even with size and mtime preserved), is not rebuilt for a mere touch, and lives where it is told."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from fairbench.datasets import cache as cache_mod
from fairbench.datasets import normalize_images
from fairbench.datasets.cache import cache_root
from fairbench.datasets.fairvlmed.load import load_fairvlmed

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), sum(map(ord, t)) % 1000] for t in texts], dtype=torch.long)


def _sample(path: Path, image: np.ndarray, label: int) -> None:
    np.savez(path, slo_fundus=image, glaucoma=np.array(label), race=np.array(label), gender=np.array(0),
             ethnicity=np.array(0), language=np.array(0), note=np.array(f"note {path.name}"))


def build(root: Path, h: int = 50, w: int = 38, seed: int = 0) -> Path:
    """Two images per split, float32 on the 0–255 scale, non-square like FairVLMed."""
    rng = np.random.default_rng(seed)
    names = []
    for i, folder in enumerate(("Training", "Training", "Validation", "Validation", "Test", "Test")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        name = f"data_{i:05d}.npz"
        _sample(root / folder / name, rng.uniform(0, 255, (h, w)).astype(np.float32), i % 2)
        names.append(name)
    with open(root / "gpt-4_summarized_notes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["File Name", "Original Note", "Summarized Note"],  # FairCLIP's script's header
                                   *[[n, "x", f"summary {n}"] for n in names]])
    return root


def load(root: Path, cache: Path, size: int = 24):
    return load_fairvlmed(root, image_size=size, tokenize=tokenize, tokenizer_key="t", cache_dir=cache)


def reference(path: Path, size: int, normalize: bool) -> torch.Tensor:
    """FairCLIP's per-sample path through open_clip's own eval transform."""
    from open_clip.transform import image_transform

    mean, std = (OPENAI_MEAN, OPENAI_STD) if normalize else ((0.0,) * 3, (1.0,) * 3)
    transform = image_transform(size, is_train=False, mean=mean, std=std)
    with np.load(path) as npz:
        return transform(Image.fromarray(npz["slo_fundus"].astype(np.float32)))


def test_cache_holds_clip_transform_of_each_image(tmp_path):
    root = build(tmp_path / "ds")
    data = load(root, tmp_path / "c")
    for split, folder in ((data.train, "Training"), (data.test, "Test")):
        for row, name in enumerate(split.sample_ids):
            ref = reference(root / folder / name, 24, normalize=False)  # (3, 24, 24) in [0, 1]
            assert torch.equal(split.images[row], (ref * 255).round().to(torch.uint8))
            normed = normalize_images(split.images[row : row + 1], OPENAI_MEAN, OPENAI_STD)[0]
            assert torch.allclose(normed, reference(root / folder / name, 24, normalize=True), atol=1e-5)


def test_cache_files_are_uint8_on_disk_and_memory_mapped(tmp_path):
    root = build(tmp_path / "ds")
    load(root, tmp_path / "c")
    files = sorted((tmp_path / "c" / "fairvlmed").glob("train-*/images_24.npy"))
    assert len(files) == 1
    arr = np.load(files[0], mmap_mode="r")
    assert arr.dtype == np.uint8 and arr.shape == (2, 1, 24, 24)
    assert not list((tmp_path / "c").rglob("*.tmp"))  # atomic writes leave no temporaries


def test_warm_load_does_not_decode_images(tmp_path, monkeypatch):
    root = build(tmp_path / "ds")
    first = load(root, tmp_path / "c")
    calls = []
    monkeypatch.setattr(cache_mod, "clip_transform_uint8", lambda *a: calls.append(a))
    second = load(root, tmp_path / "c")
    assert calls == [] and torch.equal(first.train.images, second.train.images)
    assert first.fingerprint == second.fingerprint
    os.utime(root / "Training" / "data_00000.npz")  # touch: content unchanged, no rebuild
    assert load(root, tmp_path / "c").fingerprint == first.fingerprint and calls == []


def test_changed_file_with_same_size_and_mtime_invalidates_cache(tmp_path, caplog):
    root = build(tmp_path / "ds")
    path = root / "Training" / "data_00001.npz"
    before = path.stat()
    old = load(root, tmp_path / "c")
    new_image = np.full((50, 38), 200.0, dtype=np.float32)
    _sample(path, new_image, 1)  # uncompressed npz of the same shapes: same byte size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p / rsync -a would
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        new = load(root, tmp_path / "c")
    assert "stale" in caplog.text
    assert new.fingerprint != old.fingerprint
    assert torch.equal(new.train.images[1], (reference(path, 24, normalize=False) * 255).round().to(torch.uint8))
    assert not torch.equal(new.train.images[1], old.train.images[1])
    assert torch.equal(new.train.images[0], old.train.images[0])
    # the stale entry was removed, not left to pile up
    assert len(list((tmp_path / "c" / "fairvlmed").glob("train-*"))) == 1


def test_damaged_cache_file_is_rebuilt_not_used(tmp_path, caplog):
    root = build(tmp_path / "ds")
    good = load(root, tmp_path / "c").train.images.clone()
    (cached,) = (tmp_path / "c" / "fairvlmed").glob("train-*/images_24.npy")
    np.save(tmp_path / "bad.npy", np.zeros((1, 1, 24, 24), dtype=np.uint8))  # wrong shape, e.g. old layout
    os.replace(tmp_path / "bad.npy", cached)  # a new inode, as any writer that renames would leave it
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        again = load(root, tmp_path / "c")
    assert "rebuilding" in caplog.text and torch.equal(again.train.images, good)


def test_image_size_and_tokenizer_are_separate_cache_keys(tmp_path):
    root = build(tmp_path / "ds")
    small, big = load(root, tmp_path / "c", size=16), load(root, tmp_path / "c", size=32)
    assert small.train.images.shape[-1] == 16 and big.train.images.shape[-1] == 32
    other = load_fairvlmed(root, image_size=16, tokenize=lambda t: torch.ones(len(t), 3, dtype=torch.long),
                           tokenizer_key="other", cache_dir=tmp_path / "c")
    assert other.train.tokens.shape == (2, 3) and small.train.tokens.shape == (2, 2)
    assert small.train.tokens[0].tolist() == tokenize(["summary data_00000.npz"])[0].tolist()


def test_summary_change_reaches_the_tokens(tmp_path):
    root = build(tmp_path / "ds")
    first = load(root, tmp_path / "c")
    csv_path = root / "gpt-4_summarized_notes.csv"
    csv_path.write_text(csv_path.read_text().replace("summary data_00000.npz", "changed text"))
    second = load(root, tmp_path / "c")
    assert second.train.texts[0] == "changed text" and second.fingerprint != first.fingerprint
    assert second.train.tokens[0].tolist() == tokenize(["changed text"])[0].tolist()


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "env"
    monkeypatch.delenv("FAIRBENCH_CACHE")
    assert cache_root() == Path.home() / ".cache" / "fairbench"


def test_normalize_images_broadcasts_per_channel():
    batch = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize_images(batch, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, -1.0, 0.0])
    assert out[1, :, 0, 0].tolist() == pytest.approx([1.0, 3.0, 1.0])
