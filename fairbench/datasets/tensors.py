"""From arrays to the tensors the trainer reads, and from uint8 batches to model input.

`tensors_from_arrays` is what a dataset plugin's `load` calls once per split: it resizes and centre-crops
the images the way CLIP's eval transform does (shorter side to the model's size, bicubic, antialiased),
keeps them as uint8, tokenises the texts and checks labels and attribute codes, so a plugin only has to
read its own files. `normalize_images` is the trainer's per-batch step from uint8 to normalised float.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fairbench.datasets.base import UNKNOWN, DatasetError, SplitTensors

_RESIZE_CHUNK = 256  # images resized together: bounds the float32 working memory


def normalize_images(images: torch.Tensor, mean: Sequence[float] | torch.Tensor,
                     std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float (x/255 − mean)/std on the batch's device (mean/std per channel).

    One fused multiply-add; a grayscale batch (C = 1, or 3 channels that are one expanded channel)
    is converted to float once and broadcast to the channels of mean/std.
    """
    dev = images.device
    m = torch.as_tensor(mean, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=dev).reshape(1, -1, 1, 1)
    if images.dim() == 4 and images.shape[1] > 1 and images.stride(1) == 0:
        images = images[:, :1]
    return torch.addcmul(-m / s, images.to(torch.float32), 1.0 / (255.0 * s))


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size): shorter side to `size` (bicubic, antialiased), centre crop."""
    n, c, h, w = images.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, _RESIZE_CHUNK):
        chunk = images[start:start + _RESIZE_CHUNK].to(torch.float32)
        if (new_h, new_w) != (h, w):
            chunk = F.interpolate(chunk, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        out[start:start + _RESIZE_CHUNK] = chunk[:, :, top:top + size, left:left + size].round().clamp(0, 255)
    return out


def tensors_from_arrays(images: Any, texts: Sequence[str], labels: Any, attributes: Mapping[str, Any],
                        sample_ids: Sequence[str] | None = None, *,
                        tokenize: Callable[[list[str]], torch.Tensor], image_size: int) -> SplitTensors:
    """One split from in-memory arrays.

    images      uint8, (N, H, W) grayscale or (N, H, W, C) with C = 1 or 3 (channels last, as PIL/numpy)
    texts       N training texts (the tokenizer truncates to its context length)
    labels      N values, 0 or 1
    attributes  attribute → N integer group codes (−1 = unknown: left out of that attribute's metrics)
    sample_ids  N names for prediction files (default "0".."N-1")
    """
    imgs = torch.as_tensor(np.asarray(images))
    if imgs.dtype != torch.uint8:
        raise DatasetError(f"images have dtype {imgs.dtype}; pass uint8 (0–255) images, e.g. "
                           "np.clip(x, 0, 255).astype(np.uint8)")
    if imgs.dim() == 3:
        imgs = imgs.unsqueeze(-1)
    if imgs.dim() != 4 or imgs.shape[-1] not in (1, 3):
        raise DatasetError(f"images have shape {tuple(imgs.shape)}; expected (N, H, W) or (N, H, W, 1|3)")
    n = imgs.shape[0]
    if n == 0:
        raise DatasetError("empty split: no images")
    texts = [str(t) for t in texts]
    y = torch.as_tensor(np.asarray(labels)).long()
    ids = [str(s) for s in sample_ids] if sample_ids is not None else [str(i) for i in range(n)]
    for what, length in (("texts", len(texts)), ("labels", y.numel()), ("sample_ids", len(ids)),
                         *((f"attribute {a!r}", len(np.asarray(v))) for a, v in attributes.items())):
        if length != n:
            raise DatasetError(f"{what} has {length} entries but there are {n} images; pass one per sample")
    if not bool(((y == 0) | (y == 1)).all()):
        raise DatasetError(f"labels must be 0 or 1; found {sorted(set(y.tolist()) - {0, 1})[:3]}")
    codes = {}
    for a, values in attributes.items():
        arr = np.asarray(values)
        if arr.dtype.kind not in "iu" or (arr < UNKNOWN).any():
            raise DatasetError(f"attribute {a!r} must hold integer group codes >= 0, or -1 for unknown")
        codes[a] = torch.as_tensor(arr).long()
    resized = resize_center_crop(imgs.permute(0, 3, 1, 2), image_size)
    if resized.shape[1] == 1:
        resized = resized.expand(-1, 3, -1, -1)
    tokens = torch.as_tensor(tokenize(texts)).long()
    return SplitTensors(images=resized, tokens=tokens, labels=y, attributes=codes, sample_ids=ids, texts=texts)
