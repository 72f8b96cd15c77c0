"""FairVLMed as tensors: what the trainer gets from `FairVLMed.load`.

All validation (folders, keys, labels, codes, summaries, images) happens here, before training starts;
images come from the core preprocessing cache (fairbench.datasets.cache), so no epoch decodes an npz.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fairbench.datasets.base import DataIdentity, LoadedDataset, SplitTensors
from fairbench.datasets.cache import SplitCache, cache_root, files_fingerprint, text_file_fingerprint
from fairbench.datasets.fairvlmed import meta
from fairbench.datasets.fairvlmed.format import (
    ATTRIBUTES,
    SPLITS,
    SUMMARY_SOURCE,
    DatasetError,
    Record,
    build_texts,
    check_text_source,
    find_summary_csv,
    keep_mask,
    list_split_files,
    read_image,
    read_split_records,
    read_summaries,
    read_summary_header,
    require_layout,
    split_dir,
    split_text_source,
    truncate_text,
)
from fairbench.datasets.fairvlmed.synth import is_synthetic

log = logging.getLogger("fairbench.data")


def load_fairvlmed(root: str | os.PathLike[str], *, image_size: int,
                   tokenize: Callable[[list[str]], torch.Tensor], tokenizer_key: str,
                   text_source: str = "gpt4", cache_dir: Path | None = None,
                   progress: bool = False) -> LoadedDataset:
    """Validate, cache and load the three splits; raises DatasetError before any training on bad data. Problems
    that do not stop a run (duplicate or empty summaries, a second summary file) are logged as warnings."""
    check_text_source(text_source)
    if image_size < 1:
        raise DatasetError(f"image_size must be positive, got {image_size}")
    root = Path(root).expanduser().resolve()
    uses_summaries = split_text_source(text_source)[0] == SUMMARY_SOURCE
    require_layout(root, need_summaries=uses_summaries)  # every missing piece in one message
    folders = {s: split_dir(root, s) for s in SPLITS}
    files = {s: list_split_files(folders[s]) for s in SPLITS}
    store = cache_root(cache_dir)
    caches = {s: SplitCache(store, meta.NAME, folders[s], s, files[s]) for s in SPLITS}
    shared = shared_samples({s: list(zip(files[s], caches[s].digests, strict=True)) for s in SPLITS})
    if shared:
        more = f" (and {len(shared) - 1} more; `fairbench data check` lists them)" if len(shared) > 1 else ""
        raise DatasetError(shared[0] + more)
    records = {s: _records(caches[s]) for s in SPLITS}
    summaries = read_summaries(root, text_source) if uses_summaries else None
    for problem in summaries.problems if summaries else []:
        log.warning("%s", problem)
    texts = {s: [truncate_text(t.strip()) for t in build_texts(root, files[s], records[s], text_source, summaries)]
             for s in SPLITS}
    out = {}
    for s in SPLITS:
        images = caches[s].images(image_size, read_image, progress=progress)
        tokens = caches[s].tokens(texts[s], tokenize, tokenizer_key, text_source)
        out[s] = _split_tensors(s, images, tokens, records[s], files[s], texts[s])
        if out[s].n_dropped:
            log.info("%s: dropped %d of %d samples with an unknown attribute", s, out[s].n_dropped, len(files[s]))
        if len(out[s]) == 0:
            raise DatasetError(f"{folders[s]}: every sample has an unknown (−1) attribute; nothing to evaluate")
    ident = _identity(root, [caches[s].fingerprint for s in SPLITS], len(files["train"]))
    return LoadedDataset(name=meta.NAME, root=root, synthetic=ident.synthetic, tag=ident.tag,
                         fingerprint=ident.fingerprint, text_source=text_source, **out)


def _records(cache: SplitCache) -> list[Record]:
    """Labels, attributes and notes of a split's files, from the cache's meta.json when it is current."""
    rows = cache.meta(lambda: [rec.to_row() for rec in read_split_records(cache.files)])
    return [Record.from_row(r) for r in rows]


def identify_fairvlmed(root: str | os.PathLike[str], text_source: str = "gpt4") -> DataIdentity:
    """Tag and fingerprint of a FairVLMed folder from file names, sizes and npz CRCs: no image is decoded."""
    root = Path(root).expanduser().resolve()
    check_text_source(text_source)
    uses_summaries = split_text_source(text_source)[0] == SUMMARY_SOURCE
    require_layout(root, need_summaries=uses_summaries)  # every missing piece in one message
    if uses_summaries:
        read_summary_header(root, text_source)  # an unknown layout stops the run before any job starts
    files = {s: list_split_files(split_dir(root, s)) for s in SPLITS}
    return _identity(root, [files_fingerprint(files[s]) for s in SPLITS], len(files["train"]))


def shared_samples(splits: dict[str, list[tuple[Path, str]]]) -> list[str]:
    """One problem per sample found in two splits, by file name or by identical bytes (`(path, sha256)` per file):
    a test sample that is also a training sample inflates every test metric without a word."""
    first: dict[tuple[str, str], tuple[str, Path]] = {}
    problems = []
    for split, entries in splits.items():
        for path, digest in entries:
            for kind, key in (("file name", path.name), ("content", digest)):
                seen = first.get((kind, key))
                if seen is not None and seen[0] != split:
                    what = "the same file name" if kind == "file name" else "identical bytes"
                    problems.append(f"{seen[1]} and {path}: one sample in two splits ({what}); keep it in one split")
                    break
                first.setdefault((kind, key), (split, path))
    return problems


def _identity(root: Path, split_fingerprints: list[str], n_train: int) -> DataIdentity:
    parts = [*split_fingerprints, text_file_fingerprint(find_summary_csv(root))]
    synthetic = is_synthetic(root)
    return DataIdentity(root=root, synthetic=synthetic, tag=meta.SYNTHETIC_TAG if synthetic else meta.TAG,
                        fingerprint=hashlib.sha256("|".join(parts).encode()).hexdigest()[:16], n_train=n_train)


def _split_tensors(split: str, images: np.ndarray, tokens: np.ndarray, records: list, files: list[Path],
                   texts: list[str]) -> SplitTensors:
    keep = keep_mask(records, split)
    idx = np.flatnonzero(keep)
    img = torch.from_numpy(images)
    tok = torch.from_numpy(np.ascontiguousarray(tokens)).long()
    labels = torch.tensor([r.glaucoma for r in records], dtype=torch.long)  # the label is FairVLMed.label
    attrs = {a: torch.tensor([r.attribute(a) for r in records], dtype=torch.long) for a in ATTRIBUTES}
    if not keep.all():
        sel = torch.from_numpy(idx)
        img, tok, labels = img[sel], tok[sel], labels[sel]
        attrs = {a: v[sel] for a, v in attrs.items()}
    return SplitTensors(images=img.expand(-1, 3, -1, -1), tokens=tok, labels=labels, attributes=attrs,
                        sample_ids=[files[i].name for i in idx], texts=[texts[i] for i in idx],
                        n_dropped=int((~keep).sum()))
