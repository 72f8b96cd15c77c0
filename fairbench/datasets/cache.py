"""On-disk preprocessing cache: each image through CLIP's transform once, then memory-mapped uint8.

For datasets stored as one npz (zip) file per sample with a 2-D grayscale image in it. Layout under the
cache root (arg > $FAIRBENCH_CACHE > ~/.cache/fairbench), per dataset namespace (its name):

    <namespace>/<split>-<fingerprint>/meta.json          file names and the dataset's per-file rows
    <namespace>/<split>-<fingerprint>/images_<S>.npy     uint8 (N, 1, S, S), CLIP-transformed
    <namespace>/<split>-<fingerprint>/tokens_<key>.npy   int32 (N, L)
    <namespace>/index/<hash of split folder>.json        the fingerprint last cached for that folder

Why the fingerprint is (name, size, CRC-32 of every npz member) and not (name, size, mtime_ns): a
same-size rewrite whose mtime is preserved (cp -p, rsync -a, tar, coarse-mtime filesystems) would
slip past mtime, while a plain copy or `touch` would force a needless rebuild. An npz is a zip, and
its central directory already holds a CRC-32 of each member's uncompressed bytes, so the content
key costs one small read at the end of each file. Entries are keyed by that fingerprint, so a stale
entry can never be picked up; the per-folder index lets a changed folder be reported and its old
entry removed. Every file is written to a temporary name and renamed, so readers never see half.

Images are stored with one channel (CLIP's RGB conversion of a grayscale image copies it three times)
and exposed by the caller as a (N, 3, S, S) expanded view: a third of the disk and page cache. What a
meta.json row holds (labels, attributes, notes) is the dataset's business: `SplitCache.meta` stores and
returns the JSON rows the dataset builds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fairbench.datasets.errors import DatasetError, short_error
from fairbench.files import atomic_path, write_json_atomic
from fairbench.phases import phase

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fairbench.data")  # one logger for every dataset's loading and caching

CACHE_VERSION = 1  # bump when the transform or the file layout changes
TOKENS_VERSION = 1  # bump when text building or truncation changes


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Where caches live: the argument, else $FAIRBENCH_CACHE, else ~/.cache/fairbench."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("FAIRBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fairbench"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- fingerprints

def file_signature(path: Path) -> str:
    """name, size and the CRC-32 of each npz member, read from the zip's central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = sorted((i.filename, i.CRC, i.file_size) for i in zf.infolist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: unreadable npz, corrupt or truncated ({short_error(exc)}); "
                           "re-copy the file") from exc
    body = ";".join(f"{n}:{c:08x}:{s}" for n, c, s in members)
    return f"{path.name}|{path.stat().st_size}|{body}"


def files_fingerprint(files: list[Path]) -> str:
    """Content key of npz files from their zip directories: one small read per file."""
    return _sha("\n".join(file_signature(p) for p in files))[:16]


def text_file_fingerprint(path: Path | None) -> str:
    return "none" if path is None else hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def fingerprint_files(files: list[Path], relative_to: Path | None = None) -> str:
    """Content key of any files: their names (relative to `relative_to`) and the SHA-256 of their bytes."""
    digest = hashlib.sha256()
    for path in files:
        name = str(path.relative_to(relative_to)) if relative_to is not None else path.name
        file_hash = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                file_hash.update(block)
        digest.update(f"{name}\0{file_hash.hexdigest()}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- atomic writes

def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


# ---------------------------------------------------------------- the CLIP image transform

def clip_transform_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """One image through CLIP's eval transform up to ToTensor, as uint8 (S, S).

    Same ops, same library and same order as open_clip/FairCLIP on a PIL 'F' image: resize the
    shorter side to `size` (bicubic, antialiased), centre crop, then convert to 8 bit (PIL truncates
    and clips), so ToTensor of the result equals ToTensor of their RGB image, channel for channel.
    """
    from PIL import Image
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    pil = Image.fromarray(image.astype(np.float32, copy=False))
    pil = CenterCrop(size)(Resize(size, interpolation=InterpolationMode.BICUBIC)(pil))
    return np.array(pil.convert("L"), dtype=np.uint8)


def _progress(total: int, label: str, enabled: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    if not enabled:
        return (lambda: None), (lambda: None)
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return (lambda: bar.advance(task)), bar.stop


# ---------------------------------------------------------------- one split's cache entry

class SplitCache:
    """The cache entry of one split folder, valid for exactly the files it was built from."""

    def __init__(self, root: Path, namespace: str, folder: Path, split: str, files: list[Path]) -> None:
        self.folder, self.split, self.files = folder, split, files
        self.fingerprint = files_fingerprint(files)
        base = root / namespace
        self.dir = base / f"{split}-{self.fingerprint}-v{CACHE_VERSION}"
        self._retire_stale(base / "index" / f"{_sha(str(folder.resolve()))[:16]}.json")

    def _retire_stale(self, index: Path) -> None:
        """Report and remove the entry built from an earlier state of this folder."""
        try:
            previous = json.loads(index.read_text()).get("dir")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous and previous != self.dir.name:
            old = self.dir.parent / previous
            if old.is_dir():
                log.warning("cache for %s is stale (its files changed): rebuilding", self.folder)
                shutil.rmtree(old, ignore_errors=True)
        if previous != self.dir.name:
            write_json_atomic(index, {"folder": str(self.folder.resolve()), "dir": self.dir.name})

    # -- the dataset's per-file rows (labels, attributes, notes)
    def meta(self, build: Callable[[], list[list]]) -> list[list]:
        """One JSON row per file, from meta.json when it matches these files, else from `build()` (then stored)."""
        path = self.dir / "meta.json"
        names = [p.name for p in self.files]
        try:
            meta = json.loads(path.read_text())
            if meta["files"] == names and meta["fingerprint"] == self.fingerprint:
                return meta["records"]
            log.warning("cache %s does not match its files: rebuilding", path)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        rows = build()
        write_json_atomic(path, {"fingerprint": self.fingerprint, "files": names, "records": rows})
        return rows

    # -- images
    def images(self, size: int, read_image: Callable[[Path], np.ndarray], progress: bool = False) -> np.ndarray:
        """uint8 (N, 1, S, S), memory-mapped copy-on-write; built on first use from `read_image(file)`, a 2-D
        0–255 image."""
        path = self.dir / f"images_{size}.npy"
        want = (len(self.files), 1, size, size)
        if path.exists():
            try:
                arr = np.load(path, mmap_mode="c", allow_pickle=False)
                if arr.shape == want and arr.dtype == np.uint8:
                    return arr
            except (OSError, ValueError):
                pass
            log.warning("cache %s is damaged or of the wrong shape: rebuilding", path)
        self._build_images(path, size, read_image, progress)
        return np.load(path, mmap_mode="c", allow_pickle=False)

    def _build_images(self, path: Path, size: int, read_image: Callable[[Path], np.ndarray], progress: bool) -> None:
        advance, stop = _progress(len(self.files), f"caching {self.split} images", progress)

        def one(p: Path) -> np.ndarray:
            out = clip_transform_uint8(read_image(p), size)
            advance()
            return out

        try:
            with phase(f"building the {size}-px image cache of {self.folder} ({len(self.files)} files, once)"), \
                    atomic_path(path) as tmp:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                shape=(len(self.files), 1, size, size))
                workers = max(1, min(8, os.cpu_count() or 1))
                with ThreadPoolExecutor(workers) as pool:  # PIL resize and zlib release the GIL
                    for i, img in enumerate(pool.map(one, self.files)):
                        arr[i, 0] = img
                arr.flush()
                del arr
        finally:
            stop()

    # -- tokens
    def tokens(self, texts: list[str], tokenize: Callable[[list[str]], torch.Tensor], tokenizer_key: str,
               text_source: str) -> np.ndarray:
        """int token ids (N, L) of `texts`, keyed by tokenizer, context length, source and the texts."""
        ctx = getattr(tokenize, "context_length", None)
        key = _sha(json.dumps([TOKENS_VERSION, tokenizer_key, ctx, text_source, _sha("\0".join(texts))]))[:16]
        path = self.dir / f"tokens_{key}.npy"
        if path.exists():
            try:
                arr = np.load(path, allow_pickle=False)
                if arr.ndim == 2 and arr.shape[0] == len(texts):
                    return arr
            except (OSError, ValueError):
                pass
        tok = tokenize(list(texts))
        arr = np.asarray(tok.cpu().numpy() if hasattr(tok, "cpu") else tok)
        if arr.ndim != 2 or arr.shape[0] != len(texts):
            raise DatasetError(f"tokenizer {tokenizer_key!r} returned shape {arr.shape}, expected ({len(texts)}, L)")
        dtype = np.int32 if arr.size == 0 or (arr.min() >= 0 and arr.max() < 2**31) else np.int64
        write_npy_atomic(path, arr.astype(dtype))
        return arr
