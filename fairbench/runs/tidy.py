"""Tidying a finished run folder: what an attempt killed just after it wrote result.json left behind.

`execute` writes result.json last and atomically, then removes failure.json and the training state and releases
its claim. A kill between the rename and the release leaves claim.json (a dead owner's) and the state (tens of MB)
in a folder that is done, where nothing would ever remove them: every launcher skips a finished run. The next
`fairbench run` over it, or `fairbench status`, calls `tidy_finished`.

Only leftovers of a dead attempt go: a live claim (its owner is between the rename and its own cleanup) leaves the
folder untouched, and a training state the run was told to keep (`keep_state`, recorded in result.json's `files`)
stays.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from fairbench.runs.claims import CLAIM_FILE, append_log, is_dead, read_claim
from fairbench.runs.results import FAILURE_FILE, STATE_FILE

DAMAGED_STATE = f"{STATE_FILE}.damaged"  # a training state that failed its checks, set aside by `execute`


def tidy_finished(run_dir: Path, record: dict[str, Any], timeout: float | None = None) -> list[str]:
    """Remove the leftovers of a dead attempt from the finished run folder `run_dir` (whose valid result is
    `record`); returns the names removed (empty when there was nothing to do or the claim's owner lives)."""
    run_dir = Path(run_dir)
    removed: list[str] = []
    claim = read_claim(run_dir)
    reason = ""
    if claim is not None:
        reason = is_dead(claim, timeout)
        if not reason:
            return []
        current = read_claim(run_dir)
        if current is not None and current.token == claim.token:
            with contextlib.suppress(OSError):  # gone already, or a read-only folder: nothing to tidy then
                (run_dir / CLAIM_FILE).unlink()
                removed.append(CLAIM_FILE)
    keeps_state = bool((record.get("files") or {}).get("state"))
    leftovers = [FAILURE_FILE, DAMAGED_STATE] + ([STATE_FILE] if claim is not None and not keeps_state else [])
    leftovers += [p.name for p in run_dir.glob(".*.tmp") if not p.name.startswith(f".{CLAIM_FILE}.")]
    for name in leftovers:
        path = run_dir / name
        if path.exists():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(name)
    if removed:
        with contextlib.suppress(OSError):
            why = f" (claim of {claim.owner()}: {reason})" if claim is not None else ""
            append_log(run_dir, f"{socket.gethostname()} pid {os.getpid()} tidied the finished run{why}: removed "
                                f"{', '.join(removed)}")
    return removed
