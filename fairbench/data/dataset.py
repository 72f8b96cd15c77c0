"""FairVLMed as tensors: what the trainer gets from `load_fairvlmed`.

All validation (folders, keys, labels, codes, summaries, images) happens here, before training starts;
images come from the preprocessing cache, so no epoch decodes an npz.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from fairbench.data.cache import SplitCache, cache_root, files_fingerprint, text_file_fingerprint
from fairbench.data.format import (
    ATTRIBUTES,
    SPLITS,
    TEXT_SOURCES,
    DatasetError,
    build_texts,
    find_summary_csv,
    keep_mask,
    list_split_files,
    require_layout,
    split_dir,
    truncate_text,
)
from fairbench.data.synth import default_synthetic_dataset, is_synthetic
from fairbench.datasets.base import DataIdentity, LoadedDataset, SplitTensors

log = logging.getLogger("fairbench.data")


# The split and dataset types are the core's (fairbench.datasets.base); these names are FairVLMed's view of them.
FairVLMedData = LoadedDataset


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


def resolve_dataset_path(data: str | os.PathLike[str] | None) -> Path:
    """The dataset to use: an explicit path, else $FAIRBENCH_DATA, else the default synthetic one."""
    chosen = data if data else os.environ.get("FAIRBENCH_DATA") or None
    if chosen is None:
        return default_synthetic_dataset()
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "FAIRBENCH_DATA" if not data else "--data"
        raise DatasetError(f"{path}: dataset folder not found (from {source}); pass the folder holding "
                           "Training/ Validation/ Test/")
    return path.resolve()


def load_fairvlmed(root: str | os.PathLike[str], *, image_size: int,
                   tokenize: Callable[[list[str]], torch.Tensor], tokenizer_key: str,
                   text_source: str = "gpt4", cache_dir: Path | None = None,
                   progress: bool = False) -> FairVLMedData:
    """Validate, cache and load the three splits; raises DatasetError before any training on bad data."""
    if text_source not in TEXT_SOURCES:
        raise DatasetError(f"unknown text source {text_source!r}; choose one of {', '.join(TEXT_SOURCES)}")
    if image_size < 1:
        raise DatasetError(f"image_size must be positive, got {image_size}")
    root = Path(root).expanduser().resolve()
    require_layout(root, need_summaries=text_source == "gpt4")  # every missing piece in one message
    folders = {s: split_dir(root, s) for s in SPLITS}
    files = {s: list_split_files(folders[s]) for s in SPLITS}
    store = cache_root(cache_dir)
    caches = {s: SplitCache(store, folders[s], s, files[s]) for s in SPLITS}
    records = {s: caches[s].records() for s in SPLITS}
    texts = {s: [truncate_text(t.strip()) for t in build_texts(root, files[s], records[s], text_source)]
             for s in SPLITS}
    out = {}
    for s in SPLITS:
        images = caches[s].images(image_size, progress=progress)
        tokens = caches[s].tokens(texts[s], tokenize, tokenizer_key, text_source)
        out[s] = _split_tensors(s, images, tokens, records[s], files[s], texts[s])
        if out[s].n_dropped:
            log.info("%s: dropped %d of %d samples with an unknown attribute", s, out[s].n_dropped, len(files[s]))
        if len(out[s]) == 0:
            raise DatasetError(f"{folders[s]}: every sample has an unknown (−1) attribute; nothing to evaluate")
    ident = _identity(root, [caches[s].fingerprint for s in SPLITS], len(files["train"]))
    return LoadedDataset(name="fairvlmed", root=root, synthetic=ident.synthetic, tag=ident.tag,
                         fingerprint=ident.fingerprint, text_source=text_source, **out)


def identify_fairvlmed(root: str | os.PathLike[str]) -> DataIdentity:
    """Tag and fingerprint of a FairVLMed folder from file names, sizes and npz CRCs: no image is decoded."""
    root = Path(root).expanduser().resolve()
    files = {s: list_split_files(split_dir(root, s)) for s in SPLITS}
    return _identity(root, [files_fingerprint(files[s]) for s in SPLITS], len(files["train"]))


def _identity(root: Path, split_fingerprints: list[str], n_train: int) -> DataIdentity:
    parts = [*split_fingerprints, text_file_fingerprint(find_summary_csv(root))]
    synthetic = is_synthetic(root)
    return DataIdentity(root=root, synthetic=synthetic, tag="synthetic" if synthetic else "fairvlmed",
                        fingerprint=hashlib.sha256("|".join(parts).encode()).hexdigest()[:16], n_train=n_train)


def _split_tensors(split: str, images: np.ndarray, tokens: np.ndarray, records: list, files: list[Path],
                   texts: list[str]) -> SplitTensors:
    keep = keep_mask(records, split)
    idx = np.flatnonzero(keep)
    img = torch.from_numpy(images)
    tok = torch.from_numpy(np.ascontiguousarray(tokens)).long()
    labels = torch.tensor([r.glaucoma for r in records], dtype=torch.long)
    attrs = {a: torch.tensor([r.attribute(a) for r in records], dtype=torch.long) for a in ATTRIBUTES}
    if not keep.all():
        sel = torch.from_numpy(idx)
        img, tok, labels = img[sel], tok[sel], labels[sel]
        attrs = {a: v[sel] for a, v in attrs.items()}
    return SplitTensors(images=img.expand(-1, 3, -1, -1), tokens=tok, labels=labels, attributes=attrs,
                        sample_ids=[files[i].name for i in idx], texts=[texts[i] for i in idx],
                        n_dropped=int((~keep).sum()))
