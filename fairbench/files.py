"""Writing files so that a reader never sees half of one: the atomic write every run, cache and state file uses.

Every file and folder gets the ordinary mode (0666 / 0777 less the umask), so a results folder or a cache shared by
a lab group stays usable by its other members. A write that fails names the file it was writing (never only a
temporary name), so the one-line error tells the user which path is read-only or on a full disk.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, Paths and NaN/inf (→ null) into strict JSON values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds, so readers never see
    half a file. The file gets the ordinary mode (0666 less the umask), as `open` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = new_temp_file(path)
    except OSError as exc:
        raise naming(exc, path) from None
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise naming(exc, path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def naming(exc: OSError, path: Path) -> OSError:
    """`exc` as the same kind of OSError, naming `path` (the file being written) instead of a temporary name or
    nothing (a failed write() names no file)."""
    if exc.errno is None:
        return exc
    out = OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))  # the errno's subclass
    out.__cause__ = exc
    return out


def new_temp_dir(path: Path) -> Path:
    """Create an empty, uniquely named hidden folder beside `path` (0777 less the umask, unlike mkdtemp's 0700):
    build a cache entry in it, then rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def remove_tree(path: Path) -> None:
    """Remove a folder this process built or set aside; missing is fine."""
    shutil.rmtree(path, ignore_errors=True)


_UNWRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "not permitted (immutable?)",
               errno.EROFS: "read-only file system"}
_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
         errno.EFBIG: "file too large for the file system or the process's file-size limit"}


def describe_os_error(exc: OSError, what: str = "") -> str:
    """One line for a failed file operation: the path, what went wrong in words, and the fix.

    `what` names the setting that picks the folder (e.g. "--out", "$FAIRBENCH_CACHE"), offered as the other fix."""
    where = exc.filename or "a file"
    if exc.filename2:
        where = f"{where} → {exc.filename2}"
    other = f" or choose another {what}" if what else ""
    choose = f"; choose another {what}" if what else ""
    if exc.errno in _UNWRITABLE:
        return f"cannot write {where}: {_UNWRITABLE[exc.errno]}; make it writable{other}"
    if exc.errno in _FULL:
        return f"cannot write {where}: {_FULL[exc.errno]}; free space{other}"
    if exc.errno == errno.ENOTDIR:
        return f"cannot use {where}: a part of the path is a file, not a folder{choose}"
    return f"{where}: {exc.strerror or type(exc).__name__}{choose}"


def new_temp_file(path: Path, tag: str = "") -> Path:
    """Create an empty, uniquely named hidden file beside `path` (0666 less the umask, unlike mkstemp's 0600);
    `tag` goes into the name, so a writer's leftovers can be found by who left them."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{tag + '-' if tag else ''}{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Strict JSON (NaN → null), flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
