"""What a method that does not fine-tune (zero-shot scoring, a linear probe: `Method.fit`) gets to work with.

The shared trainer takes the same pieces as arguments; a `fit` gets them as one object, so a plugin's own mode
sees exactly the data, prompts and device the trainer would, and never anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fairbench.training.feeder import SplitData
from fairbench.training.settings import TrainSettings


@dataclass
class FitContext:
    """Splits (uint8 images, tokens, labels, the training attribute's groups), the model's input pipeline and where
    caches may live. `data_key` identifies the dataset's content (its fingerprint and image size), so a cache keyed
    by it and the weights can never serve another dataset's features."""

    settings: TrainSettings
    train: SplitData
    val: SplitData
    test: SplitData
    normalize: Callable[[torch.Tensor], torch.Tensor]
    tokenize: Callable[[list[str]], torch.Tensor]
    prompts: tuple[str, str]
    device: torch.device
    auc: Callable[[np.ndarray, np.ndarray], float]
    seed: int
    data_key: str
    cache_dir: Path | None = None
    log: Callable[[str], None] = print
