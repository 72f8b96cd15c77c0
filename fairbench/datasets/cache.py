"""On-disk preprocessing cache: each image through CLIP's transform once, then memory-mapped uint8.

For datasets stored as one file per sample: an npz (zip) file with a 2-D grayscale image in it, or
an image file Pillow reads (dataset files, `fairbench.datasets.table`; grayscale or RGB). Layout under the
cache root (arg > $FAIRBENCH_CACHE > ~/.cache/fairbench), per dataset namespace (its name):

    <namespace>/<split>-<content key>-v2/meta.json               file names, the dataset's per-file rows, digest
    <namespace>/<split>-<content key>-v2/images_<S>.npy(.sha256)  uint8 (N, 1, S, S), CLIP-transformed
    <namespace>/<split>-<content key>-v2/images_<S>_c3.npy(.sha256)  uint8 (N, 3, S, S), for RGB data
    <namespace>/<split>-<content key>-v2/tokens_<key>.npy(.sha256) int32 (N, L)
    <namespace>/index/<hash of split folder>.json                the entry last cached for that folder
    <namespace>/index/<hash of split folder>.digests.json        SHA-256 of each file, by its stat (see below)

An entry is keyed by what the data *is*: the SHA-256 of every file's bytes. A key from the zip directories alone
(names, sizes, member CRC-32s) let a file whose compressed bytes were damaged, with its directory intact, train
from a warm cache while `data check` reported the bad CRC. Hashing every byte on every load would cost a full
read of the data, so each file's SHA-256 is remembered with its (size, mtime_ns, ctime_ns, inode), as git's index
does: a file written again in any way (ctime cannot be set back) is hashed again; an unchanged one costs a stat.
The zip-directory fingerprint (`files_fingerprint`, one small read per file) remains the data's identity in run
configs, where it cannot change without changing every config hash.

Every cached file carries a content digest written with it (`fairbench.digests`) and checked on every read:
meta.json holds the digest of its rows, the .npy files a `.sha256` beside them. A damaged file (zeroed images,
flipped labels) is named in one warning line and rebuilt from the data, never used. Every file is written to a
temporary name and renamed, so readers never see half; an image cache build is claimed (`build_once`), so
commands started side by side build it once.

Images are stored with one channel (CLIP's RGB conversion of a grayscale image copies it three times)
and exposed by the caller as a (N, 3, S, S) expanded view: a third of the disk and page cache. What a
meta.json row holds (labels, attributes, notes) is the dataset's business: `SplitCache.meta` stores and
returns the JSON rows the dataset builds.
"""

from __future__ import annotations

import errno
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
from fairbench.digests import (
    DigestMismatch,
    check_sidecar,
    file_sha256,
    remove_with_sidecar,
    value_digest,
    write_sidecar,
)
from fairbench.files import atomic_path, write_json_atomic
from fairbench.phases import phase

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fairbench.data")  # one logger for every dataset's loading and caching

CACHE_VERSION = 2  # bump when the transform or the file layout changes (2: content keys and digests)
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


class FileDigests:
    """SHA-256 of each file's bytes, remembered by (size, mtime_ns, ctime_ns, inode) in one JSON file per folder
    (files named relative to `root`).

    The memo carries a digest of itself; a damaged or unreadable memo is simply rebuilt (every file hashed), and one
    that cannot be written (a read-only cache) only costs the hashing next time."""

    def __init__(self, memo: Path, root: Path) -> None:
        self.memo, self.root = memo, root

    def of(self, files: list[Path]) -> list[str]:
        known = self._read()
        fresh: dict[str, list] = {}
        out = []
        for path in files:
            try:
                st = path.stat()
            except OSError as exc:
                raise DatasetError(f"{path}: unreadable ({short_error(exc)}); re-copy the file") from exc
            stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            name = str(path.relative_to(self.root))
            entry = known.get(name)
            if entry is None or entry[:4] != stamp:
                entry = [*stamp, _file_digest(path)]
            fresh[name] = entry
            out.append(entry[4])
        if fresh != known:
            try:
                write_json_atomic(self.memo, {"files": fresh, "digest": value_digest(fresh)})
            except OSError:
                pass
        return out

    def _read(self) -> dict[str, list]:
        try:
            data = json.loads(self.memo.read_text())
            files = data["files"]
            if value_digest(files) == data["digest"] and isinstance(files, dict):
                return files
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return {}


def _file_digest(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable ({short_error(exc)}); re-copy the file") from exc


# ---------------------------------------------------------------- atomic writes

def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """An .npy file and its content digest (the digest first: a reader never finds the file without it)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        write_sidecar(path, file_sha256(tmp))


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
    """The cache entry of one split folder, valid for exactly the files (and bytes) it was built from."""

    def __init__(self, root: Path, namespace: str, folder: Path, split: str, files: list[Path], *,
                 identity: Callable[[list[Path]], str] | None = files_fingerprint, index_key: str = "") -> None:
        """`identity` gives the data's identity in run configs (default: the npz zip directories; None: the content
        key itself, for formats without a cheaper key); `index_key` separates entries of several splits read from
        one folder (a dataset file's table names every split's files under the same data folder)."""
        self.folder, self.split, self.files = folder, split, files
        index = root / namespace / "index" / _sha(str(folder.resolve()) + (f"\0{index_key}" if index_key else ""))[:16]
        self.digests = FileDigests(index.with_name(index.name + ".digests.json"), folder).of(files)
        self.key = _sha("\n".join(f"{p.name}\0{d}" for p, d in zip(files, self.digests, strict=True)))[:16]
        self.fingerprint = identity(files) if identity is not None else self.key
        self.dir = root / namespace / f"{split}-{self.key}-v{CACHE_VERSION}"
        self._retire_stale(index.with_name(index.name + ".json"))

    def _retire_stale(self, index: Path) -> None:
        """Report and remove the entry built from an earlier state of this folder."""
        try:
            previous = json.loads(index.read_text()).get("dir")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous and previous != self.dir.name:
            old = self.dir.parent / previous
            if old.is_dir():
                why = "its files changed" if previous.endswith(f"-v{CACHE_VERSION}") else "built by an older fairbench"
                log.warning("cache for %s is stale (%s): rebuilding", self.folder, why)
                shutil.rmtree(old, ignore_errors=True)
        if previous != self.dir.name:
            write_json_atomic(index, {"folder": str(self.folder.resolve()), "dir": self.dir.name})

    # -- the dataset's per-file rows (labels, attributes, notes)
    def meta(self, build: Callable[[], list[list]]) -> list[list]:
        """One JSON row per file, from meta.json when it matches these files and its digest, else from `build()`
        (then stored)."""
        path = self.dir / "meta.json"
        names = [p.name for p in self.files]
        if path.exists():
            try:
                meta = json.loads(path.read_text())
                body = [meta["key"], meta["files"], meta["records"]]
                if value_digest(body) != meta["digest"]:
                    raise DigestMismatch("content does not match its digest")
                if body[:2] == [self.key, names]:
                    return meta["records"]
                why = "was built from other files"
            except (OSError, ValueError, KeyError, TypeError) as exc:
                why = "is damaged" + (f" ({exc})" if isinstance(exc, DigestMismatch) else " (unreadable)")
            log.warning("cache %s %s: rebuilding", path, why)
        rows = build()
        write_json_atomic(path, {"key": self.key, "files": names, "records": rows,
                                 "digest": value_digest([self.key, names, rows])})
        return rows

    # -- images
    def images(self, size: int, read_image: Callable[[Path], np.ndarray] | None, progress: bool = False, *,
               channels: int = 1, transform: Callable[[Path, int], np.ndarray] | None = None) -> np.ndarray:
        """uint8 (N, C, S, S), memory-mapped copy-on-write; built on first use from `read_image(file)`, a 2-D
        0–255 image put through `clip_transform_uint8`, or from `transform(file, S)`, a finished uint8 (C, S, S)
        image. Checked against its digest on every call; a damaged file is rebuilt."""
        from fairbench.runs.claims import build_once

        if channels not in (1, 3) or (read_image is None) == (transform is None):
            raise DatasetError(f"image cache: give read_image or transform (one of them), and 1 or 3 channels "
                               f"(got {channels})")
        path = self.dir / (f"images_{size}.npy" if channels == 1 else f"images_{size}_c{channels}.npy")
        want = (len(self.files), channels, size, size)
        loaded: list[np.ndarray] = []
        checks: list[bool] = []

        def ready() -> bool:  # called again once the build is claimed: warn about a damaged file only once
            if loaded:
                return True
            arr = self._load_checked(path, lambda a: a.shape == want and a.dtype == np.uint8, warn=not checks)
            checks.append(True)
            if arr is not None:
                loaded.append(arr)
            return arr is not None

        build_once(self.dir, ready, lambda: self._build_images(path, size, read_image, progress, channels, transform),
                   f"building the {size}-px image cache of {self.folder}", log=log.info)
        if not loaded and not ready():  # pragma: no cover - the build just wrote and checked it
            raise DatasetError(f"{path}: image cache missing after it was built")
        return loaded[0]

    def _load_checked(self, path: Path, fits: Callable[[np.ndarray], bool], warn: bool = True) -> np.ndarray | None:
        """The memory-mapped array at `path` if it matches its digest and `fits`; None (after one warning line if
        `warn`) when it is damaged, None silently when it does not exist."""
        if not path.exists():
            return None
        try:
            check_sidecar(path)
            arr = np.load(path, mmap_mode="c", allow_pickle=False)
            if fits(arr):
                return arr
            why = f"has shape {arr.shape} {arr.dtype}, not what these files need"
        except DigestMismatch as exc:
            why = f"is damaged ({str(exc).partition(': ')[2]})"
        except (OSError, ValueError) as exc:
            why = f"is unreadable ({short_error(exc)})"
        if warn:
            log.warning("cache %s %s: rebuilding", path, why)
        return None

    def _build_images(self, path: Path, size: int, read_image: Callable[[Path], np.ndarray] | None, progress: bool,
                      channels: int = 1, transform: Callable[[Path, int], np.ndarray] | None = None) -> None:
        advance, stop = _progress(len(self.files), f"caching {self.split} images", progress)

        def one(p: Path) -> np.ndarray:
            out = transform(p, size) if transform is not None else clip_transform_uint8(read_image(p), size)
            if out.shape != (channels, size, size) and out.shape != (size, size):
                raise DatasetError(f"{p}: image transform gave shape {out.shape}, expected "
                                   f"({channels}, {size}, {size})")
            advance()
            return out

        remove_with_sidecar(path)  # a damaged or stale file: never left next to a new digest
        try:
            with phase(f"building the {size}-px image cache of {self.folder} ({len(self.files)} files, once)"), \
                    atomic_path(path) as tmp:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                shape=(len(self.files), channels, size, size))
                _reserve(tmp)
                workers = max(1, min(8, os.cpu_count() or 1))
                with ThreadPoolExecutor(workers) as pool:  # PIL resize and zlib release the GIL
                    for i, img in enumerate(pool.map(one, self.files)):
                        arr[i] = img.reshape(channels, size, size)
                arr.flush()
                del arr
                write_sidecar(path, file_sha256(tmp))
        finally:
            stop()

    # -- tokens
    def tokens(self, texts: list[str], tokenize: Callable[[list[str]], torch.Tensor], tokenizer_key: str,
               text_source: str) -> np.ndarray:
        """int token ids (N, L) of `texts`, keyed by tokenizer, context length, source and the texts."""
        ctx = getattr(tokenize, "context_length", None)
        key = _sha(json.dumps([TOKENS_VERSION, tokenizer_key, ctx, text_source, _sha("\0".join(texts))]))[:16]
        path = self.dir / f"tokens_{key}.npy"
        arr = self._load_checked(path, lambda a: a.ndim == 2 and a.shape[0] == len(texts))
        if arr is not None:
            return np.asarray(arr)
        tok = tokenize(list(texts))
        arr = np.asarray(tok.cpu().numpy() if hasattr(tok, "cpu") else tok)
        if arr.ndim != 2 or arr.shape[0] != len(texts):
            raise DatasetError(f"tokenizer {tokenizer_key!r} returned shape {arr.shape}, expected ({len(texts)}, L)")
        dtype = np.int32 if arr.size == 0 or (arr.min() >= 0 and arr.max() < 2**31) else np.int64
        write_npy_atomic(path, arr.astype(dtype))
        return arr


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: on a full disk the write fails here as an OSError naming the
    file, where writing into a sparse mapping would kill the process with SIGBUS."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: carry on
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)
