"""Input checking and group encoding for the metric suite.

Every bad input is refused here with one line naming the array, the row and the fix, so the
numeric kernel can assume clean 0/1 labels, finite scores and dense group indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fairbench.datasets.base import UNKNOWN as UNKNOWN_CODE

# String values read as "unknown" (compared lower-case, stripped); numeric unknown is -1 or NaN.
_MISSING_STRINGS = frozenset({"", "nan", "none", "null", "<na>", "na", "-1", "unknown"})


class MetricInputError(ValueError):
    """Bad metric input; `field` names the array, `row` the 0-based offending sample and `reason` the rule."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None,
                 value: Any = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.row = row
        self.value = value
        self.reason = reason

    @classmethod
    def at(cls, field: str, row: int, value: Any, reason: str) -> MetricInputError:
        """'field[row] = value: reason', keeping the parts so a CLI can word it for its file."""
        value = value.item() if hasattr(value, "item") else value
        return cls(f"{field}[{row}] = {value!r}: {reason}", field=field, row=row, value=value, reason=reason)


@dataclass(frozen=True)
class EncodedAttribute:
    """One attribute as dense group indices; rows with unknown values get index -1."""

    name: str
    index: np.ndarray  # (N,) int64 in 0..G-1, or -1 for excluded rows
    codes: tuple[int | str, ...]  # group code per index (int code, or the raw string)
    names: tuple[str, ...]  # display name per index

    @property
    def n_excluded(self) -> int:
        return int(np.count_nonzero(self.index < 0))


def check_labels(labels: Any) -> np.ndarray:
    """Labels as int8 0/1; anything else (NaN, 2, 'yes') is an error naming the first bad row."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise MetricInputError(f"labels must be 1-D, got shape {arr.shape}", field="labels")
    if arr.size == 0:
        raise MetricInputError("labels is empty: need at least one sample", field="labels")
    if arr.dtype.kind == "b":
        return arr.astype(np.int8)
    if arr.dtype.kind not in "iuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise MetricInputError(
                f"labels must be numeric 0/1, got dtype {arr.dtype}", field="labels") from None
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetricInputError.at("labels", row, arr[row], "labels must be 0 or 1 (a binary label)")
    return arr.astype(np.int8)


def check_scores(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    """Scores as finite float64 of length n; NaN/inf is an error naming the first bad row."""
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {arr.shape}", field=name)
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise MetricInputError(f"{name} must be numeric, got dtype {arr.dtype}", field=name) from None
    if arr.shape[0] != n:
        raise MetricInputError(
            f"{name} has {arr.shape[0]} entries but labels has {n}: pass one score per sample", field=name)
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetricInputError.at(name, row, arr[row], "scores must be finite")
    return arr


def _group_sort_key(code: int | str) -> tuple[int, int | str]:
    return (0, code) if isinstance(code, int) else (1, code)


def encode_attribute(name: str, values: Any, n: int, names: Mapping[int, str] | None) -> EncodedAttribute:
    """Map integer codes or group-name strings to dense group indices (unknown → -1).

    Strings equal to a name in `names` (case-insensitive) become that name's code, so with names {1: "F"} a CSV
    with "f" and one with 1 give the same groups; other strings are groups of their own.
    """
    names = dict(names or {})
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"attribute {name!r} must be 1-D, got shape {arr.shape}", field=name)
    if arr.shape[0] != n:
        raise MetricInputError(
            f"attribute {name!r} has {arr.shape[0]} entries but labels has {n}: pass one value per sample",
            field=name)
    if arr.dtype.kind in "biuf":
        codes = _numeric_codes(name, arr)
        known = codes != UNKNOWN_CODE
        uniq, inv = np.unique(codes[known], return_inverse=True)
        index = np.full(n, -1, dtype=np.int64)
        index[known] = inv
        group_codes: tuple[int | str, ...] = tuple(int(c) for c in uniq)
    else:
        strs = arr.astype(str)
        uniq_s, inv_s = np.unique(strs, return_inverse=True)
        by_name = {str(v).strip().lower(): int(k) for k, v in names.items()}
        mapped: list[int | str | None] = [_string_code(name, s, by_name) for s in uniq_s]
        group_codes = tuple(sorted({c for c in mapped if c is not None}, key=_group_sort_key))
        position = {c: i for i, c in enumerate(group_codes)}
        lut = np.array([-1 if c is None else position[c] for c in mapped], dtype=np.int64)
        index = lut[inv_s.reshape(-1)]
    display = tuple(names.get(c, str(c)) if isinstance(c, int) else c for c in group_codes)
    if len(set(display)) != len(display):
        raise MetricInputError(
            f"attribute {name!r}: group names {display} are not unique; fix group_names", field=name)
    return EncodedAttribute(name=name, index=index, codes=group_codes, names=display)


def _numeric_codes(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f":
        nan = np.isnan(arr)
        filled = np.where(nan, UNKNOWN_CODE, arr)
        frac = filled != np.round(filled)
        if frac.any():
            row = int(np.flatnonzero(frac)[0])
            raise MetricInputError.at(name, row, arr[row], "group codes must be integers")
        codes = filled.astype(np.int64)
    else:
        codes = arr.astype(np.int64)
    bad = codes < UNKNOWN_CODE
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetricInputError.at(name, row, codes[row], "group codes must be >= 0, or -1 for unknown")
    return codes


def _string_code(name: str, raw: str, by_name: Mapping[str, int]) -> int | str | None:
    s = raw.strip()
    low = s.lower()
    if low in _MISSING_STRINGS:
        return None
    if low in by_name:
        return by_name[low]
    try:
        code = int(s)
    except ValueError:
        return s
    if code < UNKNOWN_CODE:
        raise MetricInputError(f"attribute {name!r}: group code {code} is not valid; codes must be >= 0, "
                               "or -1 for unknown", field=name)
    return code
