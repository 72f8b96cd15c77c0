"""Read a results folder once for every report command: records, the tidy frame and the problems met."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.report.aggregate import long_frame
from fairbench.runs.results import collect_results


@dataclass
class Loaded:
    records: list[dict[str, Any]]
    frame: pd.DataFrame
    problems: list[str]
    unfinished: list[Path] = field(default_factory=list)

    @property
    def unfinished_note(self) -> str:
        """One line naming run folders that were started but have no result (killed, failed or running)."""
        if not self.unfinished:
            return ""
        shown = ", ".join(str(p) for p in self.unfinished[:3]) + (" …" if len(self.unfinished) > 3 else "")
        return (f"{len(self.unfinished)} unfinished run folder(s) without result.json, not in any table: {shown}; "
                "rerun the same `fairbench run` command to finish them (or delete them)")

    @property
    def run_warnings(self) -> list[str]:
        """Warnings the trainer stored in result.json (e.g. validation AUC below 0.5), one line each."""
        return [f"{rec.get('run_id') or rec['_dir']}: {w}" for rec in self.records
                for w in (rec.get("warnings") or []) if isinstance(w, str)]


def dataset_name(record: dict[str, Any]) -> str:
    """The registry name of the dataset a run used; v0.1 result files carry only its tag, so the name is the
    registered dataset owning that tag (else the tag itself)."""
    from fairbench.registry import dataset_for_tag

    block = record.get("dataset") or {}
    if block.get("name"):
        return str(block["name"])
    tag = str(block.get("tag", "?"))
    owner = dataset_for_tag(tag)
    return owner.name if owner is not None else tag


def load_results(out: Path) -> Loaded:
    """Collect result.json files under `out`; unreadable or malformed ones (`load_result`) become problems, not
    crashes.

    Every kept record's `dataset` block has a `name` (filled in for v0.1 files, see `dataset_name`)."""
    found = collect_results(Path(out))
    records, problems = [], list(found.problems)
    for rec in found.records:
        rec["dataset"].setdefault("name", dataset_name(rec))
        records.append(rec)
    if not records and not problems:
        problems.append(f"no finished runs (result.json) under {out}; run `fairbench run` first or pass --out")
    return Loaded(records, long_frame(records), problems, found.unfinished)


def select_dataset(loaded: Loaded, dataset: str | None) -> Loaded:
    """Only the runs on `dataset`: a registry name (all its data: real and synthetic) or a results tag."""
    if dataset is None:
        return loaded
    keep = [r for r in loaded.records if dataset in (r["dataset"].get("name"), r["dataset"].get("tag"))]
    return Loaded(keep, long_frame(keep), loaded.problems)


def load_predictions(record: dict[str, Any], split: str = "test") -> tuple[pd.DataFrame | None, str]:
    """A run's saved predictions with numeric label/score, or None and a one-line reason."""
    name = (record.get("files") or {}).get(f"predictions_{split}") or f"predictions_{split}.csv"
    path = Path(record["_dir"]) / name
    if not path.is_file():
        return None, f"{path}: missing; rerun that run to restore its predictions"
    try:
        preds = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"{path}: not a readable CSV ({exc}); rerun that run"
    missing = [c for c in ("sample", "label", "score") if c not in preds.columns]
    if missing:
        return None, f"{path}: no column {', '.join(missing)}; rerun that run"
    for col in ("label", "score"):
        values = pd.to_numeric(preds[col], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0]) + 1
            return None, f"{path}: column {col!r} row {row} is not a number; rerun that run"
        preds[col] = values
    return preds, ""
