"""What the trainer hands over after every epoch so a stopped run continues with the same numbers: the model,
optimiser and scheduler state, every random number generator and the best-so-far bookkeeping. How it is written to
and read from a run folder is `fairbench.runs.state`'s business."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


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
    # Under a selection rule over all epochs (DTO): each epoch it may still pick, by epoch number ("3"), with its
    # weights and validation scores (a tensor).
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)


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
