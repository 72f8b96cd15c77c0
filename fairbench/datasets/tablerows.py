"""A dataset file's table read into samples: split, image file, label, group codes and text of every row.

One reader serves `load` (which stops on the first problem) and `data check` (which lists them all), so both
judge a row the same way. Every problem names the CSV file and the row (data rows numbered from 1, the header
not counted) and the sample id, and says what to fix. Stdlib only, no image is opened here.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fairbench.datasets.errors import DatasetError
from fairbench.datasets.tablespec import SPLIT_NAMES, AttributeSpec, TableSpec, template_fields

UNKNOWN = -1


@dataclass
class Sample:
    """One valid row."""

    split: str
    id: str
    image: Path
    label: int
    codes: dict[str, int]
    text: str


@dataclass
class TableRows:
    """The valid samples of each split, every problem found, the CSV files read and the rows per split."""

    samples: dict[str, list[Sample]] = field(default_factory=lambda: {s: [] for s in SPLIT_NAMES})
    problems: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    n_rows: Counter = field(default_factory=Counter)  # split → rows assigned to it (valid or not)


def find_table(spec: TableSpec, root: Path) -> Path | None:
    """The metadata CSV: the first of the spec's names present under root."""
    return next((root / name for name in spec.tables if (root / name).is_file()), None)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: unreadable CSV ({exc}); re-export it as UTF-8 CSV") from None
    return header, rows


def read_rows(spec: TableSpec, root: Path) -> TableRows:
    """Every row of the dataset's table(s) judged against the spec."""
    out = TableRows()
    tables: list[tuple[Path, str | None]] = []  # (CSV, the split all its rows belong to, or None)
    if spec.split_files:
        for split in SPLIT_NAMES:
            path = root / spec.split_files[split]
            if not path.is_file():
                out.problems.append(f"{path}: split file of {split} not found; fix [split].files or the folder")
            else:
                tables.append((path, split))
    else:
        path = find_table(spec, root)
        if path is None:
            out.problems.append(f"{root}: no metadata table ({' or '.join(spec.tables)}); pass the data folder that "
                                "holds it (--data), or fix [table].csv in " + spec.path.name)
        else:
            tables.append((path, None))
    needed = spec.columns()
    parsed = []
    for path, split in tables:
        out.sources.append(path)
        header, rows = _read_csv(path)
        missing = [c for c in needed if c not in header]
        for column in missing:
            out.problems.append(f"{path}: no column {column!r} (columns: {', '.join(header)}); fix the table or "
                                f"the dataset file {spec.path.name}")
        parsed.append((path, split, rows, set(missing)))
    generated = _generated_split(spec, parsed) if spec.split_fractions else {}
    seen: dict[str, str] = {}
    patients: dict[str, tuple[str, str]] = {}
    dirs = [root / d for d in spec.image_dirs]
    for path, split, rows, missing in parsed:
        for n, row in enumerate(rows, 1):
            where = f"{path.name} row {n} ({row.get(spec.id_column) or 'no id'})"
            problems: list[str] = []
            sample_id = (row.get(spec.id_column) or "").strip()
            if spec.id_column not in missing:
                if not sample_id:
                    problems.append("empty id")
                elif sample_id in seen:
                    problems.append(f"id repeats {seen[sample_id]}; ids name samples in prediction files")
                else:
                    seen[sample_id] = f"{path.name} row {n}"
            chosen = split or _split_of(spec, row, generated, problems, missing)
            if chosen is None and not problems:
                continue  # a row the split rule leaves out (a split value that names no split is a problem)
            if chosen is not None:
                out.n_rows[chosen] += 1
            label = _label(spec, row, problems, missing)
            codes = {a.name: _code(a, row, problems, missing) for a in spec.attributes}
            text = _text(spec, row, problems, missing)
            image = _image(spec, row, dirs, problems, missing)
            if spec.patient_column and spec.patient_column not in missing and chosen is not None:
                patient = (row.get(spec.patient_column) or "").strip()
                first = patients.setdefault(patient, (chosen, f"{path.name} row {n}"))
                if patient and first[0] != chosen:
                    problems.append(f"patient {patient!r} is in {chosen} and in {first[0]} ({first[1]}); keep each "
                                    "patient in one split")
            out.problems += [f"{where}: {p}" for p in problems]
            if problems or None in (chosen, label, image, text) or any(c is None for c in codes.values()):
                continue
            out.samples[chosen].append(Sample(chosen, sample_id, image, label, codes, text))
    for split in SPLIT_NAMES:
        if not out.samples[split] and not out.problems:
            out.problems.append(f"{spec.path.name}: split {split} has no rows; check the split rule in [split]")
    return out


def _split_of(spec: TableSpec, row: dict[str, str], generated: dict[str, str], problems: list[str],
              missing: set[str]) -> str | None:
    if spec.split_fractions:
        key = _unit(spec, row)
        return generated.get(key)
    if spec.split_column in missing:
        return None
    value = (row.get(spec.split_column) or "").strip()
    for split, names in spec.split_values.items():
        if value in names:
            return split
    known = ", ".join(v for names in spec.split_values.values() for v in names)
    problems.append(f"split {value!r} in column {spec.split_column!r} is none of {known}; fix the row or "
                    "[split].values")
    return None


def _unit(spec: TableSpec, row: dict[str, str]) -> str:
    """What a generated split keeps together: the patient, else the sample."""
    column = spec.patient_column or spec.id_column
    return (row.get(column) or "").strip()


def _generated_split(spec: TableSpec, parsed: list) -> dict[str, str]:
    """unit → split for a drawn split: the sorted units shuffled by numpy's generator with the file's seed, then cut
    at the fractions (rounded), so the same table and seed give the same split on every machine."""
    import numpy as np

    units = sorted({_unit(spec, row) for _, _, rows, _ in parsed for row in rows} - {""})
    order = np.random.default_rng(spec.split_seed).permutation(len(units))
    n_train = round(spec.split_fractions["train"] * len(units))
    n_val = round(spec.split_fractions["val"] * len(units))
    out = {}
    for rank, i in enumerate(order):
        out[units[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _label(spec: TableSpec, row: dict[str, str], problems: list[str], missing: set[str]) -> int | None:
    if spec.label_column in missing:
        return None
    value = (row.get(spec.label_column) or "").strip()
    if value in spec.positive:
        return 1
    if value in spec.negative or (not spec.negative and value):
        return 0
    allowed = ", ".join([*spec.positive, *spec.negative])
    problems.append(f"label {value!r} in column {spec.label_column!r} is none of {allowed}; fix the row or "
                    "[label] positive/negative")
    return None


def _code(attr: AttributeSpec, row: dict[str, str], problems: list[str], missing: set[str]) -> int | None:
    if attr.column in missing:
        return None
    value = (row.get(attr.column) or "").strip()
    if not value or value in attr.unknown:
        return UNKNOWN
    if attr.numeric:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        if math.isnan(x):
            problems.append(f"{attr.name} {value!r} in column {attr.column!r} is not a number; fix it or list it "
                            f"in [attributes.{attr.name}].unknown")
            return None
        edges = list(attr.bins)
        return bisect.bisect_left(edges, x) if attr.closed == "right" else bisect.bisect_right(edges, x)
    for code, cells in enumerate(attr.values):
        if value in cells:
            return code
    groups = "; ".join(f"{n}: {', '.join(c)}" for n, c in zip(attr.names, attr.values, strict=True))
    problems.append(f"{attr.name} {value!r} in column {attr.column!r} is no known group ({groups}"
                    + (f"; unknown: {', '.join(attr.unknown)}" if attr.unknown else "")
                    + f"); fix the row or add it to [attributes.{attr.name}]")
    return None


def _text(spec: TableSpec, row: dict[str, str], problems: list[str], missing: set[str]) -> str | None:
    if spec.text_column:
        if spec.text_column in missing:
            return None
        return (row.get(spec.text_column) or "").strip()
    assert spec.text_template is not None
    fields = template_fields(spec.text_template)
    if any(f in missing for f in fields):
        return None
    values = {f: spec.text_values.get(f, {}).get((row.get(f) or "").strip(), (row.get(f) or "").strip())
              for f in fields}
    return spec.text_template.format_map(values)


def _image(spec: TableSpec, row: dict[str, str], dirs: list[Path], problems: list[str],
           missing: set[str]) -> Path | None:
    fields = template_fields(spec.image)
    if any(f in missing for f in fields):
        return None
    relative = spec.image.format_map({f: (row.get(f) or "").strip() for f in fields})
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        problems.append(f"image path {relative!r} leaves the data folder; image paths are relative to it")
        return None
    for folder in dirs:
        path = folder / relative
        if path.is_file():
            return path
    where = " or ".join(str(d / relative) for d in dirs)
    problems.append(f"image {relative} not found ({where}); copy it there or fix the row")
    return None
