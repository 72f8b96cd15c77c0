"""From result records to one tidy frame, with config variants named and seeds summarised.

The tidy frame (one row per run × evaluation attribute × group × metric) is the single source every
table, plot and CSV reads, so they cannot disagree about which runs were counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pandas as pd

from fairbench.protocols import protocol_of
from fairbench.selection import selection_label  # noqa: F401 - re-exported: reports import it from here

OVERALL = "overall"
# Columns of the tidy frame, in order. `group` is "" for attribute-level metrics; `value` is raw (0–1), not × 100.
LONG_COLUMNS = (
    "dataset", "synthetic", "selection", "protocol", "method", "arch", "variant", "config_hash", "train_attribute",
    "eval_attribute", "group", "metric", "value", "seed", "run_id", "mode", "single_run", "trainable",
)
# How a run used the model (fairbench.method.Method.mode); results written before modes existed fine-tuned.
DEFAULT_MODE = "fine-tune"
ROW_KEYS = ("dataset", "synthetic", "selection", "protocol", "method", "arch", "variant")
_SKIP_CONFIG_KEYS = frozenset({"seed", "seeds", "out", "output", "attribute", "attr"})
_MAX_VARIANT_KEYS = 3


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _fmt_setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_fmt_setting(v) for v in value)
    return str(value)


def variant_labels(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Map each run_dir to a label naming the settings that differ from same-method runs ("" if none).

    Runs of one method/arch/dataset/selection/training attribute with different config hashes must not
    be averaged together; the label (e.g. "lambda=1e-05") makes them separate, readable rows.
    """
    by_group: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in records:
        key = _variant_group(rec)
        by_group[key][rec["config_hash"]] = _flatten(rec.get("config") or {})
    labels_by_hash: dict[tuple, str] = {}
    for key, configs in by_group.items():
        if len(configs) == 1:
            labels_by_hash[key + (next(iter(configs)),)] = ""
            continue
        all_keys = sorted(set().union(*configs.values()) - _SKIP_CONFIG_KEYS)
        differing = [k for k in all_keys
                     if k.split(".")[-1] not in _SKIP_CONFIG_KEYS
                     and len({repr(c.get(k, "∅")) for c in configs.values()}) > 1]
        leaves = [k.split(".")[-1] for k in differing]
        names = [leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(differing, leaves, strict=True)]
        for cfg_hash, cfg in configs.items():
            if not differing or len(differing) > _MAX_VARIANT_KEYS:
                labels_by_hash[key + (cfg_hash,)] = f"cfg {cfg_hash}"
            else:
                labels_by_hash[key + (cfg_hash,)] = ", ".join(
                    f"{n}={_fmt_setting(cfg.get(k, '∅'))}" for n, k in zip(names, differing, strict=True))
    return {rec["_dir"]: labels_by_hash[_variant_group(rec) + (rec["config_hash"],)] for rec in records}


def _variant_group(rec: dict[str, Any]) -> tuple:
    """Runs whose configs are told apart by a variant label: one method/arch/dataset/selection/protocol/training
    attribute and usage mode (rows of two modes are apart already, and their labels name the mode)."""
    return (rec["dataset"].get("tag"), rec["selection"].get("rule"), protocol_of(rec), rec["method"], rec["arch"],
            rec.get("attribute"), rec.get("mode") or DEFAULT_MODE)


def sampling_of(record: dict[str, Any]) -> str:
    """How a run drew its batches ("uniform" for files written before the `sampling` field existed)."""
    return str(record.get("sampling") or "uniform")


def row_variant(record: dict[str, Any], config_variant: str) -> str:
    """A row's variant label: the settings that differ from same-method runs, and the sampling when it is not the
    uniform shuffle, so a resampled run never reads as the plain one (kohpangwei/group_DRO #6)."""
    sampling = sampling_of(record)
    parts = [config_variant] if config_variant else []
    if sampling != "uniform" and f"sampling={sampling}" not in config_variant:
        parts.append(f"sampling={sampling}")
    return ", ".join(parts)


def _num(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def long_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Tidy test-split metrics: one row per run × evaluation attribute × group × metric (raw values)."""
    labels = variant_labels(records)
    rows: list[tuple] = []
    for rec in records:
        base = (rec["dataset"].get("tag", "?"), bool(rec["dataset"].get("synthetic", False)),
                rec["selection"].get("rule", "?"), protocol_of(rec), rec["method"], rec["arch"],
                row_variant(rec, labels[rec["_dir"]]),
                rec["config_hash"], rec.get("attribute") or "")
        trainable = rec.get("trainable_parameters")
        tail = (int(rec["seed"]), rec.get("run_id") or rec["_dir"], str(rec.get("mode") or DEFAULT_MODE),
                bool(rec.get("single_run", False)), -1 if not isinstance(trainable, int) else trainable)
        suite = rec["metrics"]["test"] or {}
        for metric in ("auc", "accuracy"):
            if metric in suite:
                rows.append(base + (OVERALL, "", metric, _num(suite[metric])) + tail)
        for attr, block in (suite.get("attributes") or {}).items():
            for metric, value in block.items():
                if metric == "groups":
                    continue
                rows.append(base + (attr, "", metric, _num(value)) + tail)
            if "auc" not in block and "auc" in suite:
                rows.append(base + (attr, "", "auc", _num(suite["auc"])) + tail)
            for group, stats in (block.get("groups") or {}).items():
                for metric, value in stats.items():
                    if metric != "code":
                        rows.append(base + (attr, str(group), metric, _num(value)) + tail)
    return pd.DataFrame(rows, columns=list(LONG_COLUMNS))


def eval_attributes(frame: pd.DataFrame) -> list[str]:
    """Evaluation attributes present, in the order the result files list them (their dataset's order)."""
    return [a for a in dict.fromkeys(frame["eval_attribute"]) if a != OVERALL]


def for_attribute(frame: pd.DataFrame, attr: str) -> pd.DataFrame:
    """Runs that belong in attribute `attr`'s table: trained on `attr` (for an intersection `sex+site`, on one
    of its parts), or trained on no attribute."""
    mask = (frame["eval_attribute"] == attr) & frame["train_attribute"].isin([attr, "", *attr.split("+")])
    return frame[mask]


def summarise(frame: pd.DataFrame, by: Iterable[str]) -> pd.DataFrame:
    """Mean, sample std (ddof = 1), number of non-null values, the sorted seeds and the non-null
    (seed, value) pairs per group (the pairs let a table say which seed is far off)."""
    by = list(by)
    if frame.empty:
        return pd.DataFrame(columns=by + ["mean", "std", "n", "seeds", "per_seed"])
    grouped = frame.groupby(by, sort=False, dropna=False)
    out = grouped["value"].agg(mean="mean", std=lambda v: v.std(ddof=1), n="count")
    out["seeds"] = grouped["seed"].agg(lambda s: tuple(sorted(set(int(x) for x in s))))
    def as_key(key: Any) -> tuple:
        return key if isinstance(key, tuple) else (key,)

    known = frame[frame["value"].notna()]
    pairs = {as_key(key): tuple(sorted(zip(g["seed"].astype(int).tolist(), g["value"].astype(float).tolist(),
                                           strict=True)))
             for key, g in known.groupby(by, sort=False, dropna=False)}
    out["per_seed"] = [pairs.get(as_key(key), ()) for key in out.index]
    return out.reset_index()


def trained_on(frame: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    """(method, arch) → the attributes its runs were trained on ("" for a run trained on none)."""
    pairs = frame[["method", "arch", "train_attribute"]].drop_duplicates()
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for method, arch, attr in pairs.itertuples(index=False):
        out[(method, arch)].add(attr)
    return dict(out)


def seed_problem(seeds: tuple[int, ...], expected: int) -> str:
    """Why a row's seeds are suspect ("" if they are 0..S−1 with S the table's largest count)."""
    missing = sorted(set(range(max(expected, len(seeds)))) - set(seeds))
    if not missing:
        return ""
    have = ",".join(map(str, seeds))
    return f"seeds {have} (missing {','.join(map(str, missing))})"
