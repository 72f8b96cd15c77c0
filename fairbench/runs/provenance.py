"""Which code produced a result: the git commit of the fairbench checkout, and whether it had local changes.

Recorded in result.json so a number can be traced to the code that made it. Empty when the package does not
run from a git checkout (an installed wheel) or git is unavailable.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the `fairbench` package folder


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """{"git_commit": sha, "git_dirty": bool} of the checkout holding this package, or {} outside one."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or not (Path(top) / _PACKAGE_DIR.name).resolve() == _PACKAGE_DIR:
        return {}  # not a checkout of fairbench itself (e.g. installed into another project's repo)
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status)}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
