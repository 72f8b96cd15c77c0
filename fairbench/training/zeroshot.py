"""The published zero-shot protocol: two prompts, softmax over cosine similarities (no logit scale).

p(class 1) = softmax([cos(img, prompt of class 0), cos(img, prompt of class 1)])[1], as in FairCLIP's
`compute_vl_prob`; the predicted label is p ≥ 0.5, i.e. "the closer prompt". The prompts are the dataset's.
Similarities and softmax are computed in fp32 even when the encoders run under bf16 autocast: in bf16 the
scores collapse to a few hundred distinct values and the threshold-based fairness metrics move.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairbench.training.precision import fp32, full_precision, is_native


@torch.no_grad()
def zero_shot_scores(model: nn.Module, images_uint8: torch.Tensor, tokenize: Callable[[list[str]], torch.Tensor],
                     prompts: tuple[str, str], normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                     batch_size: int = 256, autocast: bool = False) -> np.ndarray:
    """p(class 1) for every image, batched; `normalize` turns a uint8 batch on `device` into model input (fp16 for
    the `fairclip` protocol's plain fp16 model, which then scores in fp16 as FairCLIP's evaluation does).

    `autocast` runs the encoders under bf16 autocast."""
    was_training = model.training
    model.eval()
    mixed = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
    try:
        with mixed:  # the encoders run in bf16 when asked; the scores never do
            text_features = model.encode_text(tokenize(list(prompts)).to(device))
        native = is_native()
        with full_precision():
            text = F.normalize(text_features if native else fp32(text_features), dim=-1)
        out = []
        for start in range(0, images_uint8.shape[0], batch_size):
            chunk = torch.as_tensor(images_uint8[start:start + batch_size]).to(device, non_blocking=True)
            with mixed:
                image_features = model.encode_image(normalize(chunk))
            with full_precision():
                feats = F.normalize(image_features if native else fp32(image_features), dim=-1)
                out.append(torch.softmax(feats @ text.t(), dim=-1)[:, 1])
    finally:
        model.train(was_training)
    return torch.cat(out).cpu().double().numpy() if out else np.zeros(0)
