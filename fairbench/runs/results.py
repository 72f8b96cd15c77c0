"""Run records on disk: where a run lives, how its files are written, and how a results folder is read.

One directory per (dataset, method, arch, training attribute, config hash, seed). `result.json` is
written atomically and last, so its presence means the run finished; tables and plots read only it
(and the predictions files it names).

result.json (schema "fairbench.result/1"):
  schema, run_id (path relative to the results root), method, arch, attribute (training attribute or
  null), seed, dataset {name (registry name; absent in older files), tag, synthetic, path, fingerprint,
  n {train,val,test}, n_dropped {val,test}},
  config {protocol, method, arch, pretrained, attribute, text_source, method_settings, train, pretraining (archs
  fairbench pretrains)} (`run_config`), config_hash,
  pretrained {weights} or, for a start fairbench pretrained, that checkpoint's provenance {key, path, sha256,
  recipe, val_auc, ...},
  selection {rule (a registered selection rule: "val", "test"), metric, epoch, label},
  metrics {"val": suite, "test": suite} (suite = fairbench.metrics suite dict, NaN stored as null),
  sampling (how batches were drawn, fairbench.training.sampling: "uniform", "group-balanced", or a plugin's name;
  absent in older files, which all drew uniformly),
  epochs_trained, warnings [one line each, e.g. a validation AUC below 0.5], versions {...},
  code {git_commit, git_dirty} (empty outside a git checkout), device, timings {train_s, eval_s, total_s},
  finished_at, files {config, history, predictions_val, predictions_test, checkpoint (only with the trainer
  setting checkpoint=true, which b16 and l14 default to)}.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairbench.files import to_jsonable

RESULT_SCHEMA = "fairbench.result/1"
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
PREDICTIONS_FILE = "predictions_{split}.csv"
STATE_FILE = "train_state.pt"  # the training state after the last completed epoch (fairbench.runs.state)
FAILURE_FILE = "failure.json"  # why the last attempt at a run failed; removed when the run finishes
NO_ATTRIBUTE = "none"

class CorruptResultError(ValueError):
    """A result.json that cannot be parsed or lacks required fields."""


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a resolved config (key order and float formatting independent)."""
    blob = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def run_config(*, protocol: str, method: str, arch: str, pretrained: str | None, attribute: str | None,
               text_source: str, method_settings: dict[str, Any], train: Any,
               pretraining: str | None = None) -> dict[str, Any]:
    """The config one run records (config.json, result.json's `config`) and hashes: `train` is the resolved
    `TrainSettings`, stored without its run-control settings (they change no number, so not the hash)."""
    from fairbench.method import settings_dict
    from fairbench.training.settings import ADAPTER_SETTINGS, LATER_SETTINGS, RUN_CONTROL_SETTINGS

    config = {
        "protocol": protocol,
        "method": method,
        "arch": arch,
        "pretrained": pretrained,
        "attribute": attribute,
        "text_source": text_source,
        "method_settings": method_settings,
        "train": {k: v for k, v in settings_dict(train).items() if k not in RUN_CONTROL_SETTINGS
                  and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])
                  and (k not in ADAPTER_SETTINGS or getattr(train, "adapter", "none") != "none")},
    }
    if pretraining is not None:  # the checkpoint's key (recipe, data, torch) makes a new pretraining a new run folder
        config["pretraining"] = pretraining
    return config


def configured_epochs(config: Any) -> int | None:
    """The epoch count a run folder's config.json asks for (None if it cannot tell)."""
    try:
        return int(config["train"]["epochs"])
    except (TypeError, KeyError, ValueError):
        return None


def run_dir(out: Path, dataset_tag: str, method: str, arch: str, attribute: str | None,
            cfg_hash: str, seed: int) -> Path:
    """<out>/<tag>/<method>/<arch>/<attribute|none>/<hash>/seed<N>; every part follows the naming rule, so a run
    folder is always inside `out`."""
    from fairbench.models.archs import arch_folder
    from fairbench.registry import check_name

    arch = arch_folder(arch)  # a local-dir: / hf-hub: model gets a slug of its path
    for kind, part in (("dataset tag", dataset_tag), ("method", method), ("arch", arch),
                       ("attribute", attribute or NO_ATTRIBUTE), ("config hash", cfg_hash)):
        check_name(kind, part)
    return Path(out) / dataset_tag / method / arch / (attribute or NO_ATTRIBUTE) / cfg_hash / f"seed{seed}"


REQUIRED_KEYS = ("schema", "method", "arch", "seed", "dataset", "config_hash", "selection", "metrics")


def load_result(path: Path) -> dict[str, Any]:
    """Read and validate one result.json as far as every report needs it; raise CorruptResultError naming the file.

    What a report cannot tabulate must not count as finished either: `fairbench run` then sets the file aside and
    trains the run again, where a report would only ever say "rerun that run"."""
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
    why = _malformed(record)
    if why:
        raise CorruptResultError(f"{path}: {why}; delete it or rerun that run")
    record["_dir"] = str(path.parent)
    return record


def _malformed(record: dict[str, Any]) -> str:
    """Why a result.json with every required key still cannot be tabulated ("" if it can)."""
    if not isinstance(record["dataset"], dict) or not isinstance(record["selection"], dict):
        return "dataset/selection must be objects"
    metrics = record["metrics"]
    test = metrics.get("test") if isinstance(metrics, dict) else None
    if not isinstance(test, dict) or not test:
        return "no test metrics"
    if "auc" not in test or not isinstance(test.get("attributes", {}), dict):
        return "metrics.test is not a metric-suite object"
    seed = record["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"seed {seed!r} is not an integer"
    return ""


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
