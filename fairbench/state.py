"""A run's training state between epochs, so a killed run continues where it stopped with the same numbers.

After every epoch the trainer hands over a `TrainState`: model, optimiser and scheduler state, every random
number generator (Python, NumPy, torch CPU and CUDA, the shuffling generator, the group sampler's orders and
positions), the history and the best-so-far bookkeeping (epoch, key, scores, weights). `save_state` writes it
atomically to `train_state.pt` in the run folder; `load_state` reads it back. Restoring it before the next
epoch makes the rest of the run the same computation as an uninterrupted one, so its result.json metrics and
prediction files come out byte-identical.

The file holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairbench.results import STATE_FILE, atomic_path, to_jsonable

__all__ = ["STATE_FILE", "StateError", "TrainState", "load_state", "rng_state", "save_state", "set_rng_state"]
STATE_FORMAT = "fairbench.train_state/1"


class StateError(ValueError):
    """A training-state file that cannot be used to resume (unreadable, another format or another config)."""


@dataclass
class TrainState:
    """Everything the trainer needs to continue after `epochs_done` completed epochs."""

    epochs_done: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor
    rng: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_key: float = -math.inf
    val_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    test_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # The selected epoch's weights; None with `best_is_current` when that epoch is the last one (the weights are
    # then `model`, stored once), or when the run keeps no best weights (test selection without checkpoint).
    best_weights: dict[str, torch.Tensor] | None = None
    best_is_current: bool = False
    train_seconds: float = 0.0
    eval_seconds: float = 0.0


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (where present) every CUDA device's generator state."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_state(path: Path, state: TrainState, config_hash: str) -> None:
    """Write `state` atomically (a reader or a kill sees the previous complete file or this one), fsynced."""
    blob = {"format": STATE_FORMAT, "config_hash": config_hash, **_to_plain(state)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(blob, fh)
            fh.flush()
            os.fsync(fh.fileno())


def load_state(path: Path, config_hash: str) -> TrainState:
    """Read a state written by `save_state` for the run with `config_hash`; StateError says why it is unusable."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same thing here: the file cannot be resumed from
        raise StateError(f"{path}: not a readable training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        raise StateError(f"{path}: not a {STATE_FORMAT} file")
    if blob.get("config_hash") != config_hash:
        raise StateError(f"{path}: written for config {blob.get('config_hash')}, not {config_hash}")
    fields = {k: v for k, v in blob.items() if k not in ("format", "config_hash")}
    fields["val_scores"] = fields["val_scores"].numpy()
    fields["test_scores"] = fields["test_scores"].numpy()
    try:
        return TrainState(**fields)
    except TypeError as exc:
        raise StateError(f"{path}: incomplete training state ({exc})") from None


def _to_plain(state: TrainState) -> dict[str, Any]:
    out = dict(state.__dict__)
    out["history"] = to_jsonable(state.history)  # as history.json has it: plain floats (a method's numpy scalars
    # would not load with weights_only), NaN as None
    out["val_scores"] = torch.from_numpy(np.ascontiguousarray(state.val_scores))
    out["test_scores"] = torch.from_numpy(np.ascontiguousarray(state.test_scores))
    return out
