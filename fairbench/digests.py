"""Content digests: how fairbench knows that a file it wrote, and reads back as input to a number, is still the
file it wrote.

A damaged intermediate file (a zeroed block of a training state, a flipped label in a cached meta.json, a
truncated image cache) is otherwise read back without a word and yields a wrong number under the right config
hash. So every such file carries a SHA-256 of its content, written with it and checked on every read:

  - `value_digest` hashes a nested structure of tensors, arrays and plain values (the training state, the
    rows of a cache's meta.json). It is stored inside the file and checked against what was *loaded*, so it
    covers the content whatever the encoding;
  - a sidecar `<file>.sha256` (the `sha256sum` format: `sha256sum -c` checks it too) carries the digest of
    a file whose format has no room for one (the memory-mapped .npy caches). It is written before the file is
    renamed into place, so a reader never finds a complete file whose digest is missing, only (after a kill) a
    digest without its file, which reads as a mismatch and rebuilds a cache entry.

A file that fails its check is never used: the caller names it in one warning line and rebuilds it (a cache) or
sets it aside and restarts (a training state).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairbench.files import atomic_path

SIDECAR_SUFFIX = ".sha256"
_BLOCK = 1 << 20


class DigestMismatch(ValueError):
    """A file's content does not match the digest written with it (or the digest is missing)."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + SIDECAR_SUFFIX)


def write_sidecar(path: Path, digest: str) -> None:
    """Write `<path>.sha256` for `path`'s final name (call it before the file is renamed into place)."""
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(f"{digest}  {Path(path).name}\n")


def read_sidecar(path: Path) -> str | None:
    """The digest in `<path>.sha256`, or None when it is missing or not a digest of `path`."""
    try:
        text = sidecar(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    digest, _, name = text.strip().partition("  ")
    if name != Path(path).name or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        return None
    return digest


def check_sidecar(path: Path) -> None:
    """Raise DigestMismatch (saying which) unless `path`'s bytes match its sidecar digest."""
    want = read_sidecar(path)
    if want is None:
        raise DigestMismatch(f"{path}: no content digest ({sidecar(path).name} missing or unreadable)")
    if file_sha256(path) != want:
        raise DigestMismatch(f"{path}: content does not match its digest ({sidecar(path).name})")


def remove_with_sidecar(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def value_digest(value: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tuples, tensors, numpy arrays and scalars.

    Type tags, lengths, dict keys (sorted), dtypes and shapes all enter the hash, so no two different structures
    share a byte stream; tensors and arrays contribute their raw bytes (viewed, not copied, when contiguous)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if value is None or isinstance(value, bool):
        h.update(b"N" if value is None else (b"T" if value else b"F"))
    elif isinstance(value, int):
        text = str(value).encode()
        h.update(b"i" + struct.pack("<I", len(text)) + text)
    elif isinstance(value, float):
        h.update(b"f" + (struct.pack("<d", value) if not math.isnan(value) else b"nan\0\0\0\0\0"))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"s" + struct.pack("<Q", len(data)) + data)
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"b" + struct.pack("<Q", len(value)) + bytes(value))
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        h.update(b"d" + struct.pack("<Q", len(items)))
        for key, item in items:
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        h.update((b"l" if isinstance(value, list) else b"t") + struct.pack("<Q", len(value)))
        for item in value:
            _feed(h, item)
    elif _is_tensor(value):
        _feed_tensor(h, value)
    elif hasattr(value, "dtype") and hasattr(value, "shape") and hasattr(value, "tobytes"):  # numpy array / scalar
        _feed_array(h, value)
    else:
        raise TypeError(f"value_digest cannot hash a {type(value).__name__}")


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "untyped_storage")


def _feed_tensor(h: Any, tensor: Any) -> None:
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    h.update(b"x" + json.dumps([str(t.dtype), list(t.shape)]).encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _feed_array(h: Any, array: Any) -> None:
    import numpy as np

    arr = np.ascontiguousarray(array)
    h.update(b"a" + json.dumps([arr.dtype.str, list(arr.shape)]).encode())
    if arr.dtype.hasobject:
        raise TypeError("value_digest cannot hash object arrays")
    if arr.size:
        h.update(memoryview(arr.reshape(-1).view(np.uint8)))
