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

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairbench.files import atomic_path, to_jsonable
from fairbench.runs.results import STATE_FILE
from fairbench.training.resume import TrainState, rng_state, set_rng_state

__all__ = ["STATE_FILE", "StateError", "TrainState", "load_state", "rng_state", "save_state", "set_rng_state"]
STATE_FORMAT = "fairbench.train_state/1"


class StateError(ValueError):
    """A training-state file that cannot be used to resume (unreadable, another format or another config)."""


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
