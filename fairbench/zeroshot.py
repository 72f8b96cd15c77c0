"""The published zero-shot protocol: two prompts, softmax over cosine similarities (no logit scale).

p(class 1) = softmax([cos(img, prompts[0]), cos(img, prompts[1])])[1], as in FairCLIP's `compute_vl_prob`;
the predicted label is p ≥ 0.5, i.e. "the closer prompt". The prompts are the dataset's (`Dataset.prompts`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def zero_shot_scores(model: nn.Module, images_uint8: torch.Tensor, tokenize: Callable[[list[str]], torch.Tensor],
                     normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                     batch_size: int = 256, autocast: bool = False, *, prompts: Sequence[str]) -> np.ndarray:
    """p(class 1) for every image, batched; `prompts` are the class-0 and class-1 prompts, `normalize` turns a
    uint8 batch on `device` into model input."""
    if len(prompts) != 2:
        raise ValueError(f"zero-shot scoring needs two prompts (class 0, class 1), got {len(prompts)}")
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            text = F.normalize(model.encode_text(tokenize(list(prompts)).to(device)).float(), dim=-1)
            out = []
            for start in range(0, images_uint8.shape[0], batch_size):
                chunk = torch.as_tensor(images_uint8[start:start + batch_size]).to(device, non_blocking=True)
                feats = F.normalize(model.encode_image(normalize(chunk)).float(), dim=-1)
                out.append(torch.softmax(feats @ text.t(), dim=-1)[:, 1])
    finally:
        model.train(was_training)
    return torch.cat(out).cpu().double().numpy() if out else np.zeros(0)
