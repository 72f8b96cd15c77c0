"""Read a results folder once for every report command: records, the tidy frame and the problems met."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fairbench.report.aggregate import long_frame
from fairbench.results import collect_results


@dataclass
class Loaded:
    records: list[dict[str, Any]]
    frame: pd.DataFrame
    problems: list[str]


def _malformed(rec: dict[str, Any]) -> str:
    """Why a record that passed load_result still cannot be tabulated ("" if it can)."""
    if not isinstance(rec.get("dataset"), dict) or not isinstance(rec.get("selection"), dict):
        return "dataset/selection must be objects"
    test = rec["metrics"].get("test")
    if not isinstance(test, dict) or not isinstance(test.get("attributes", {}), dict):
        return "metrics.test is not a metric-suite object"
    try:
        int(rec["seed"])
    except (TypeError, ValueError):
        return f"seed {rec['seed']!r} is not an integer"
    return ""


def load_results(out: Path) -> Loaded:
    """Collect result.json files under `out`; unreadable or malformed ones become problems, not crashes."""
    found = collect_results(Path(out))
    records, problems = [], list(found.problems)
    for rec in found.records:
        why = _malformed(rec)
        if why:
            problems.append(f"skipped {rec['_dir']}/result.json: {why}; delete it or rerun that run")
        else:
            records.append(rec)
    if not records and not problems:
        problems.append(f"no finished runs (result.json) under {out}; run `fairbench run` first or pass --out")
    return Loaded(records, long_frame(records), problems)
