"""Where each run of a results folder stands, read from its files alone (no process is asked anything).

  done     result.json loads (leftovers of an attempt killed after it finished are tidied: fairbench.runs.tidy)
  running  a live claim: host, pid, epochs done, heartbeat age
  stale    a claim whose owner is dead (no heartbeat within the timeout, or its process on this host is gone);
           a rerun takes it over and resumes from the saved state
  failed   failure.json (the last attempt raised), or a result.json that does not load
  pending  no claim: never started, or interrupted (a rerun resumes from the saved state)

`fairbench status` prints these; launchers and studies can call `status_of` with their planned jobs to include
runs that have no folder yet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fairbench.runs.claims import CLAIM_FILE, CLAIM_LOG, ClaimInfo, is_dead, read_claim
from fairbench.runs.results import (
    CONFIG_FILE,
    FAILURE_FILE,
    HISTORY_FILE,
    RESULT_FILE,
    STATE_FILE,
    CorruptResultError,
    configured_epochs,
    load_result,
)
from fairbench.runs.tidy import tidy_finished

if TYPE_CHECKING:
    from fairbench.runs.jobs import PlannedJob

STATES = ("done", "running", "stale", "failed", "pending")
_MARKERS = (RESULT_FILE, CONFIG_FILE, CLAIM_FILE, CLAIM_LOG, FAILURE_FILE, STATE_FILE)


@dataclass
class RunStatus:
    run_dir: Path
    label: str
    state: str
    detail: str = ""
    claim: ClaimInfo | None = None


def run_status(run_dir: Path, label: str | None = None, *, timeout: float | None = None,
               now: float | None = None) -> RunStatus:
    """The state of one run folder (which may not exist yet)."""
    run_dir = Path(run_dir)
    label = label or label_of(run_dir)
    now = time.time() if now is None else now
    result = run_dir / RESULT_FILE
    bad_result = ""
    if result.exists():
        try:
            record = load_result(result)
        except CorruptResultError as exc:
            bad_result = str(exc)
        else:
            removed = tidy_finished(run_dir, record, timeout)
            note = f"tidied {', '.join(removed)} left by an attempt killed after it finished" if removed else ""
            return RunStatus(run_dir, label, "done", note)
    epochs = _epochs(run_dir)
    claim = read_claim(run_dir)
    if claim is not None:
        done = f"{claim.epoch}/{epochs} epochs" if epochs else f"{claim.epoch} epoch(s)"
        reason = is_dead(claim, timeout, now)
        if not reason:
            return RunStatus(run_dir, label, "running", f"{claim.owner()}, {done}, heartbeat {claim.age(now):.0f} s "
                             "ago", claim)
        return RunStatus(run_dir, label, "stale", f"claim by {claim.owner()} is dead ({reason}); a rerun takes it "
                         f"over{_resume_note(run_dir, epochs)}", claim)
    if bad_result:
        return RunStatus(run_dir, label, "failed", f"{bad_result}; a rerun moves it aside and trains again")
    failure = _read_json(run_dir / FAILURE_FILE)
    if isinstance(failure, dict):
        return RunStatus(run_dir, label, "failed", f"{failure.get('error', 'unknown error')} (on {failure.get('host')} "
                         f"at {failure.get('at')}); a rerun tries again{_resume_note(run_dir, epochs)}")
    if not run_dir.exists():
        return RunStatus(run_dir, label, "pending", "not started")
    if (run_dir / STATE_FILE).exists():
        return RunStatus(run_dir, label, "pending", f"interrupted{_resume_note(run_dir, epochs)}")
    return RunStatus(run_dir, label, "pending", "started, no epoch saved" if (run_dir / CONFIG_FILE).exists()
                     else "not started")


def status_of(out: Path, planned: list[PlannedJob] | None = None, *, timeout: float | None = None) -> list[RunStatus]:
    """Every run folder under `out` (sorted), or exactly the `planned` jobs' runs, folder or not."""
    now = time.time()
    if planned is not None:
        return [run_status(p.run_dir, p.label(), timeout=timeout, now=now) for p in planned]
    return [run_status(d, timeout=timeout, now=now) for d in run_folders(out)]


def run_folders(out: Path) -> list[Path]:
    """Folders below `out` holding any file a run writes."""
    out = Path(out)
    found = {p.parent for name in _MARKERS for p in out.rglob(name)}
    return sorted(found)


def totals(statuses: list[RunStatus]) -> str:
    counts = Counter(s.state for s in statuses)
    parts = [f"{counts[state]} {state}" for state in STATES if counts[state]]
    return f"{len(statuses)} run(s): " + (", ".join(parts) if parts else "none")


def label_of(run_dir: Path) -> str:
    """"method arch attribute seedN" from the folder layout <tag>/<method>/<arch>/<attribute>/<hash>/seed<N>."""
    parts = Path(run_dir).parts
    if len(parts) >= 5 and parts[-1].startswith("seed"):
        attr = "-" if parts[-3] == "none" else parts[-3]
        return f"{parts[-5]} {parts[-4]} {attr} {parts[-1]}"
    return str(run_dir)


def _epochs(run_dir: Path) -> int | None:
    return configured_epochs(_read_json(run_dir / CONFIG_FILE))


def _resume_note(run_dir: Path, epochs: int | None) -> str:
    if not (run_dir / STATE_FILE).exists():
        return ""
    history = _read_json(run_dir / HISTORY_FILE)
    done = len(history) if isinstance(history, list) else 0
    return f", resuming after epoch {done}" + (f"/{epochs}" if epochs else "")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
