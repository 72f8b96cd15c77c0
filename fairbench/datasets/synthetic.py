"""Synthetic stand-ins generated once into the cache, for every dataset that ships a generator.

A generated set is a folder whose marker file lists the SHA-256 of every other file in it. It is built under a claim
(`fairbench.runs.claims.build_once`), so commands started side by side generate it once, and a copy whose files no
longer match its marker is named in one warning and generated again: a damaged synthetic set never yields a number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairbench.datasets.errors import DatasetError

log = logging.getLogger("fairbench.data")


def synthetic_damage(path: Path, marker: str) -> str:
    """Why the generated set at `path` cannot be used ("" if it can): missing, incomplete, or a file that does not
    match the SHA-256 its marker lists (checked through the cache's stat memo: a stat per unchanged file)."""
    from fairbench.datasets.cache import FileDigests

    try:
        listed = json.loads((path / marker).read_text())["sha256"]
    except FileNotFoundError:
        return "incomplete (no marker)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its marker lists no content digests (written by an older fairbench, or damaged)"
    if not isinstance(listed, dict):
        return "its marker lists no content digests (written by an older fairbench, or damaged)"
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != marker)
    names = [str(p.relative_to(path)) for p in files]
    if sorted(listed) != names:
        extra = sorted(set(names) ^ set(listed))
        return f"its files differ from those its marker lists (e.g. {extra[0]})"
    memo = path.parent / "index" / f"{path.name}.digests.json"
    try:
        actual = FileDigests(memo, path).of(files)
    except DatasetError as exc:
        return str(exc)
    bad = [n for n, d in zip(names, actual, strict=True) if listed[n] != d]
    if bad:
        return f"{len(bad)} file(s) do not match the digests written with them (e.g. {bad[0]})"
    return ""


def cached_generated_set(kind: str, version: int, params: dict[str, Any], cache_dir: Path | None, what: str,
                         size: str, make: Callable[[Path], Any], marker: str) -> Path:
    """The set `make(folder)` generates with `params`, under the cache root once, keyed by `kind`, the generator
    `version` and `params`; `size` says how large it is in the one line shown while it is generated."""
    from fairbench.datasets.cache import cache_root
    from fairbench.files import new_temp_dir, remove_tree
    from fairbench.phases import phase
    from fairbench.runs.claims import build_once

    key = hashlib.sha256(json.dumps([version, params], sort_keys=True).encode()).hexdigest()[:10]
    path = cache_root(cache_dir) / "synthetic" / f"{kind}-v{version}-{key}"
    warned: list[str] = []

    def ready() -> bool:
        damage = synthetic_damage(path, marker)
        if damage and path.exists() and damage not in warned:
            log.warning("%s: %s: generating it again", path, damage)
            warned.append(damage)
        return not damage

    def build() -> None:
        remove_tree(path)  # an interrupted or damaged copy
        tmp = new_temp_dir(path)
        try:
            with phase(f"generating {what} ({size}, once) into {path}"):
                make(tmp)
            os.rename(tmp, path)
        finally:
            remove_tree(tmp)

    build_once(path.parent / f".{path.name}.build", ready, build, f"generating {what}", log=log.info)
    return path
