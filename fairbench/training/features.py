"""Frozen image features, extracted once per (weights, dataset content, split) and cached with a content digest.

A linear probe trains its head many times (every seed, every regularisation value, every attribute) on the same
features; re-encoding the images each time would cost a full forward pass of the encoder per run. The cache key
is a digest of the model's weights, the dataset's content key and the split, so changed weights or data can never
read stale features; the file stores a digest of the features it holds, checked on every read, and a damaged
file is named in one warning and rebuilt (fairbench.digests).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fairbench.digests import value_digest
from fairbench.files import atomic_path
from fairbench.training.context import FitContext
from fairbench.training.feeder import SplitData

FEATURES_FORMAT = "fairbench.features/1"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor of the model's state dict (names, dtypes, shapes and bytes)."""
    return value_digest(dict(model.state_dict()))


@torch.no_grad()
def encode_images(model: nn.Module, data: SplitData, context: FitContext) -> torch.Tensor:
    """`model.encode_image` of every image of a split (eval mode, fp32, batches of eval_batch_size), on the CPU: the
    embedding after the image projection, not L2-normalised, as FairCLIP's probe takes it (FairCLIP
    mae/engine_finetune.py lines 88-89 and 175-176)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        size = context.settings.eval_batch_size
        for start in range(0, data.images.shape[0], size):
            chunk = torch.as_tensor(data.images[start:start + size]).to(context.device, non_blocking=True)
            out.append(model.encode_image(context.normalize(chunk)).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def cached_features(model: nn.Module, splits: dict[str, SplitData], context: FitContext) -> dict[str, torch.Tensor]:
    """Each split's image features, from the cache when a valid entry exists, else encoded and cached."""
    from fairbench.datasets.cache import cache_root

    weights = weights_digest(model)
    folder = cache_root(context.cache_dir) / "features"
    out = {}
    for name, data in splits.items():
        key = value_digest({"weights": weights, "data": context.data_key, "split": name,
                            "n": int(data.images.shape[0])})
        path = folder / f"{key[:24]}.pt"
        features = _read(path, key, context)
        if features is None:
            features = encode_images(model, data, context)
            _write(path, key, features)
        out[name] = features
    return out


def _read(path: Path, key: str, context: FitContext) -> torch.Tensor | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        ok = (isinstance(blob, dict) and blob.get("format") == FEATURES_FORMAT and blob.get("key") == key
              and value_digest(blob.get("features")) == blob.get("digest"))
    except Exception:  # unreadable: treated as damaged
        ok = False
    if not ok:
        context.log(f"[yellow]warning[/]: feature cache {path} does not match its digest (damaged or stale); "
                    "encoding the images again")
        path.unlink(missing_ok=True)
        return None
    return blob["features"]


def _write(path: Path, key: str, features: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FEATURES_FORMAT, "key": key, "digest": value_digest(features), "features": features}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
