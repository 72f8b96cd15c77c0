"""Run records on disk: where a run lives, how its files are written, and how a results folder is read.

One directory per (dataset, method, arch, training attribute, config hash, seed). `result.json` is
written atomically and last, so its presence means the run finished; tables and plots read only it
(and the predictions files it names).

result.json (schema "fairbench.result/1"):
  schema, run_id (path relative to the results root), method, arch, attribute (training attribute or
  null), seed, dataset {name (registry name; absent in older files), tag, synthetic, path, fingerprint,
  n {train,val,test}, n_dropped {val,test}},
  config {...resolved settings...}, config_hash, selection {rule "val"|"test", metric, epoch, label},
  metrics {"val": suite, "test": suite} (suite = fairbench.metrics suite dict, NaN stored as null),
  epochs_trained, versions {...}, device, timings {train_s, eval_s, total_s}, finished_at,
  files {config, history, predictions_val, predictions_test}.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_SCHEMA = "fairbench.result/1"
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
PREDICTIONS_FILE = "predictions_{split}.csv"
STATE_FILE = "train_state.pt"  # the training state after the last completed epoch (fairbench.state)
FAILURE_FILE = "failure.json"  # why the last attempt at a run failed; removed when the run finishes
NO_ATTRIBUTE = "none"

SELECTION_LABELS = {
    "val": "best validation AUC",
    "test": "best TEST AUC (papers' rule; optimistic)",
}


class CorruptResultError(ValueError):
    """A result.json that cannot be parsed or lacks required fields."""


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a resolved config (key order and float formatting independent)."""
    blob = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_dir(out: Path, dataset_tag: str, method: str, arch: str, attribute: str | None,
            cfg_hash: str, seed: int) -> Path:
    return Path(out) / dataset_tag / method / arch / (attribute or NO_ATTRIBUTE) / cfg_hash / f"seed{seed}"


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
    tmp = new_temp_file(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def new_temp_file(path: Path) -> Path:
    """Create an empty, uniquely named hidden file beside `path` (0666 less the umask, unlike mkstemp's 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
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


REQUIRED_KEYS = ("schema", "method", "arch", "seed", "dataset", "config_hash", "selection", "metrics")


def load_result(path: Path) -> dict[str, Any]:
    """Read and minimally validate one result.json; raise CorruptResultError naming the file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptResultError(f"{path}: not readable JSON ({exc}); delete it or rerun that run") from None
    if not isinstance(record, dict):
        raise CorruptResultError(f"{path}: expected a JSON object; delete it or rerun that run")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise CorruptResultError(f"{path}: missing {', '.join(missing)}; delete it or rerun that run")
    if record["schema"] != RESULT_SCHEMA:
        raise CorruptResultError(f"{path}: schema {record['schema']!r} is not {RESULT_SCHEMA!r}")
    if "test" not in record["metrics"]:
        raise CorruptResultError(f"{path}: no test metrics; delete it or rerun that run")
    record["_dir"] = str(path.parent)
    return record


@dataclass
class ResultSet:
    """Every finished run under a results root, plus the problems met while reading it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)  # run folders with a config but no result yet


def iter_result_files(root: Path) -> Iterator[Path]:
    yield from sorted(Path(root).rglob(RESULT_FILE))


def collect_results(root: Path) -> ResultSet:
    """Load every result.json below `root`; corrupt files become problems, not exceptions."""
    out = ResultSet()
    root = Path(root)
    if not root.exists():
        out.problems.append(f"results folder {root} does not exist; run `fairbench run` first or pass --out")
        return out
    for path in iter_result_files(root):
        try:
            out.records.append(load_result(path))
        except CorruptResultError as exc:
            out.problems.append(f"skipped {exc}")
    out.unfinished = sorted(p.parent for p in root.rglob(CONFIG_FILE) if not (p.parent / RESULT_FILE).exists())
    return out
