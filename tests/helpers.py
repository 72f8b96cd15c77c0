"""Shared test helpers: a small synthetic FairVLMed and fast trainer settings."""

from __future__ import annotations

from pathlib import Path

SMALL = {"n_train": 96, "n_val": 48, "n_test": 64, "size": 64, "seed": 0}


def small_synthetic(root: Path) -> Path:
    from fairbench.datasets.fairvlmed.synth import make_synthetic

    path = root / "synth-small"
    if not path.exists():
        make_synthetic(path, **SMALL)
    return path
