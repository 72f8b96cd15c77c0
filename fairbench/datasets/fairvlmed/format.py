"""Harvard-FairVLMed exactly as published: split folders, per-patient npz files, GPT-4 summary CSV.

Everything here is numpy/stdlib only, so the CLI's `data check` and the loader share one reading of
the format. Facts follow FairCLIP's public loader (Harvard-Ophthalmology-AI-Lab/FairCLIP,
FairCLIP/src/modules.py): `slo_fundus` read with `.astype(float32)`, 0-d label/attribute arrays read
with `.item()`, summaries from CSV column 0 (file name) and column 2 (summary) (`fair_vl_med_dataset.__init__`:
`row.iloc[0]` and `row.iloc[2]`), samples found by a case-sensitive `npz` suffix (`find_all_files`), the
180-character word-boundary cut, and evaluation splits that drop samples with any unknown (−1) attribute. One
deliberate difference: files are sorted, where FairCLIP uses unsorted `os.listdir`.

The training text is never guessed: the summary CSV must carry one of the published headers (`SUMMARY_LAYOUTS`),
or the user names the summary column (text source `gpt4:COLUMN`); anything else is an error naming the columns
found. Duplicate rows, empty summaries and a second summary file that differs are reported (`Summaries.problems`).
"""

from __future__ import annotations

import csv
import io
import math
import threading
import zipfile
import zlib
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from fairbench.datasets.base import UNKNOWN, DatasetError
from fairbench.datasets.base import short_error as _short
from fairbench.datasets.fairvlmed import meta

ATTRIBUTE_GROUPS: dict[str, dict[int, str]] = meta.ATTRIBUTES
ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_GROUPS)  # the papers' order

# Published split folder names; the test split appears as `Test/` or, in some releases, `Testing/`.
SPLIT_DIRS: dict[str, tuple[str, ...]] = {
    "train": ("Training",),
    "val": ("Validation",),
    "test": ("Test", "Testing"),
}
SPLITS: tuple[str, ...] = tuple(SPLIT_DIRS)
EVAL_SPLITS: frozenset[str] = frozenset({"val", "test"})
# Common misnamings, so `data check` can say what to rename.
_MISNAMED: dict[str, str] = {
    "train": "Training", "training": "Training", "Train": "Training",
    "val": "Validation", "valid": "Validation", "validation": "Validation", "Val": "Validation",
    "test": "Test", "testing": "Test", "Tests": "Test",
}

IMAGE_KEY = "slo_fundus"
REQUIRED_KEYS: tuple[str, ...] = (IMAGE_KEY, "glaucoma", *ATTRIBUTES)
OPTIONAL_KEYS: tuple[str, ...] = ("maritalstatus", "age", "note", "note_extra")

SUMMARY_CSVS: tuple[str, ...] = ("gpt-4_summarized_notes.csv", "gpt4_summarized_notes.csv")
TEXT_SOURCES: tuple[str, ...] = ("gpt4", "note", "note+demographics")
SUMMARY_SOURCE = "gpt4"  # `gpt4` reads a published layout; `gpt4:COLUMN` names the summary column
MAX_TEXT_CHARS = 180
# The published summary-CSV headers; both are read as FairCLIP reads the file: file name in column 0, summary in
# column 2. The first is what FairCLIP's summarisation script writes (src/dataset_deidentification_summarization.py,
# `preprocess`: columns 'File Name', 'Original Note', 'Summarized Note'); the second uses the FairVLMed data card's
# names for the same columns (data_summary.csv: filename, note, gpt4_summary), as fairbench's synthetic data does.
SUMMARY_LAYOUTS: tuple[tuple[str, ...], ...] = (("File Name", "Original Note", "Summarized Note"),
                                                ("filename", "note", "gpt4_summary"))

# Everything numpy/zipfile raise on a damaged npz: truncated zip, bad deflate stream, CRC mismatch,
# bad npy header, object arrays under allow_pickle=False.
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class Record:
    """The non-image contents of one npz file."""

    glaucoma: int
    race: int
    gender: int
    ethnicity: int
    language: int
    maritalstatus: int
    age: float
    note: str | None
    note_extra: str | None

    def attribute(self, name: str) -> int:
        return int(getattr(self, name))

    def to_row(self) -> list:
        """The record as one JSON row of the preprocessing cache's meta.json (age NaN → null)."""
        return [None if isinstance(v, float) and math.isnan(v) else v for v in astuple(self)]

    @classmethod
    def from_row(cls, row: list) -> Record:
        return cls(*(math.nan if (i == _AGE and v is None) else v for i, v in enumerate(row)))


_AGE = 6  # position of `age` in a Record row


# ---------------------------------------------------------------- split folders and files

def find_split_dir(root: Path, split: str) -> Path | None:
    """The folder of `split` under root, or None; raises if both `Test/` and `Testing/` exist."""
    found = [root / name for name in SPLIT_DIRS[split] if (root / name).is_dir()]
    if len(found) > 1:
        raise DatasetError(f"{root}: both {found[0].name}/ and {found[1].name}/ exist; keep one test folder")
    return found[0] if found else None


def split_dir(root: Path, split: str) -> Path:
    """Like find_split_dir, but a missing folder is an error naming what exists instead."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass the folder holding Training/ Validation/ Test/")
    found = find_split_dir(root, split)
    if found is None:
        raise DatasetError(layout_problem(root, [split], need_summaries=False))
    return found


def _split_names(split: str) -> str:
    first, *others = SPLIT_DIRS[split]
    return f"{first}/" + "".join(f" (or {o}/)" for o in others)


def layout_problem(root: Path, splits: list[str] | None = None, need_summaries: bool = True) -> str:
    """One line naming every missing split folder (and the summary CSV) under an existing root; "" if none.

    A first-time user who points --data at an empty or wrong folder should learn everything the format
    needs at once, not one folder per attempt.
    """
    root = Path(root)
    missing = [s for s in (splits or list(SPLITS)) if not any((root / n).is_dir() for n in SPLIT_DIRS[s])]
    no_csv = need_summaries and find_summary_csv(root) is None
    if not missing and not no_csv:
        return ""
    parts = []
    present = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
    if missing:
        noun = "split folder" if len(missing) == 1 else "split folders"
        parts.append(f"{noun} {', '.join(_split_names(s) for s in missing)} (found: {', '.join(present) or 'none'})")
    if no_csv:
        parts.append(f"GPT-4 summary CSV ({' or '.join(SUMMARY_CSVS)})")
    hints = [f"rename {p} to {_MISNAMED[p[:-1]]}/" for p in present
             if _MISNAMED.get(p[:-1]) in {SPLIT_DIRS[s][0] for s in missing}]
    if len(missing) == len(SPLITS) and not hints:
        hints.append("pass the FairVLMed folder that holds Training/ Validation/ Test/"
                     + (" and the summary CSV" if need_summaries else ""))
    elif no_csv:
        hints.append("add the CSV or use text source 'note'")
    return f"{root}: missing " + " and ".join(parts) + "".join(f"; {h}" for h in hints)


def require_layout(root: Path, need_summaries: bool = True) -> None:
    """Raise one DatasetError naming every missing piece of the dataset folder, before any file is read."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; pass the folder holding Training/ Validation/ Test/")
    for split in SPLITS:
        find_split_dir(root, split)  # two test folders is its own error
    problem = layout_problem(root, need_summaries=need_summaries)
    if problem:
        raise DatasetError(problem)


def broken_links(folder: Path) -> list[str]:
    """One problem per `*.npz` entry that is a symlink loop or a dangling symlink (sorted): a silently dropped
    sample would change the split without a word."""
    problems = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix == ".npz" and p.is_symlink()):
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop this way
            problems.append(f"{path}: symlink loop; replace it with the file it should point to")
        except OSError as exc:
            kind = "symlink loop" if "loop" in str(exc).lower() or getattr(exc, "errno", None) == 40 else \
                "dangling symlink (its target does not exist)"
            problems.append(f"{path}: {kind}; replace it with the file it should point to")
    return problems


def misnamed_samples(folder: Path) -> list[str]:
    """One problem per file whose suffix is `.npz` in another case (`.NPZ`): FairCLIP's loader and this one read
    only `.npz`, so such a sample would silently be left out of its split."""
    return [f"{p}: sample saved with the suffix {p.suffix!r}, which is not read; rename it to {p.stem}.npz"
            for p in sorted(Path(folder).iterdir()) if p.suffix.lower() == ".npz" and p.suffix != ".npz"]


def list_split_files(folder: Path) -> list[Path]:
    """All `*.npz` files of a split folder in sorted (deterministic) order; an empty split, a broken symlink or a
    sample saved as `.NPZ` is an error."""
    broken = broken_links(folder) + misnamed_samples(folder)
    if broken:
        more = f" (and {len(broken) - 1} more; `fairbench data check` lists them)" if len(broken) > 1 else ""
        raise DatasetError(broken[0] + more)
    files = sorted(p for p in Path(folder).iterdir() if p.suffix == ".npz" and p.is_file())
    if not files:
        raise DatasetError(f"{folder}: empty split (no .npz files)")
    return files


# ---------------------------------------------------------------- one npz file

def _scalar(npz: np.lib.npyio.NpzFile | ThreadedNpz, key: str, problems: list[str]) -> object | None:
    try:
        arr = npz[key]
    except READ_ERRORS as exc:
        problems.append(f"key {key!r} unreadable ({_short(exc)})")
        return None
    if arr.size != 1:
        problems.append(f"key {key!r} has shape {arr.shape}, expected a 0-d scalar")
        return None
    return arr.reshape(()).item()


def _code(value: object, key: str, allowed: set[int], problems: list[str]) -> int:
    try:
        code = int(value)  # type: ignore[call-overload]
        ok = float(value) == code and code in allowed  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok, code = False, UNKNOWN
    if not ok:
        what = "label" if key == "glaucoma" else "attribute code"
        problems.append(f"{key}={value!r} is not a valid {what} (allowed: {sorted(allowed)})")
    return code


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_record(npz: np.lib.npyio.NpzFile | ThreadedNpz) -> tuple[Record | None, list[str]]:
    """Labels, attributes and notes of one opened npz, plus every problem found (empty when valid)."""
    problems: list[str] = []
    missing = [k for k in REQUIRED_KEYS if k not in npz.files]
    if missing:
        problems.append(f"missing key(s) {', '.join(missing)} (has: {', '.join(npz.files)})")
    values = {k: _scalar(npz, k, problems) for k in ("glaucoma", *ATTRIBUTES, *OPTIONAL_KEYS) if k in npz.files}
    glaucoma = _code(values["glaucoma"], "glaucoma", {0, 1}, problems) if "glaucoma" in values else 0
    codes = {a: _code(values[a], a, {*ATTRIBUTE_GROUPS[a], UNKNOWN}, problems) if a in values else UNKNOWN
             for a in ATTRIBUTES}
    if problems:
        return None, problems
    try:
        marital = int(values.get("maritalstatus", UNKNOWN))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        marital = UNKNOWN
    try:
        age = float(values.get("age", float("nan")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        age = float("nan")
    rec = Record(glaucoma=glaucoma, maritalstatus=marital, age=age, note=_text(values.get("note")),
                 note_extra=_text(values.get("note_extra")), **codes)
    return rec, []


def image_problems(image: np.ndarray) -> list[str]:
    """Why an `slo_fundus` array is not a usable 0–255 grayscale image (empty when fine)."""
    if image.ndim != 2:
        return [f"{IMAGE_KEY} has shape {image.shape}, expected a 2-D grayscale image (H, W)"]
    if image.size == 0:
        return [f"{IMAGE_KEY} is empty"]
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
        return [f"{IMAGE_KEY} has dtype {image.dtype}, expected numbers"]
    values = image.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        return [f"{IMAGE_KEY} contains NaN or inf"]
    top = float(values.max())
    if top <= 1.0:
        return [f"{IMAGE_KEY} looks like a 0–1 scale image (max {top:g}); FairVLMed images are 0–255, "
                "multiply by 255 before saving"]
    return []


# CPython 3.11 keeps the AST constructor's recursion counter per interpreter, so ast.literal_eval (which numpy uses
# to parse every .npy header) in two threads at once can raise "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905). The threaded readers below decompress in parallel and parse headers one at a
# time.
_HEADER_LOCK = threading.Lock()


class ThreadedNpz:
    """An npz opened for reading from worker threads: members decompress in parallel (zlib releases the GIL),
    their .npy headers are parsed under one lock. Raises what np.load raises on a damaged file."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path)
        self.files = [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.files:
            raise KeyError(f"{key} is not a file in the archive")
        raw = self._zip.read(key + ".npy")
        with _HEADER_LOCK:
            return np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)

    def __enter__(self) -> ThreadedNpz:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()


def read_image(path: Path) -> np.ndarray:
    """The image of one file as FairCLIP reads it (float32, 0–255), validated. Safe to call from worker threads."""
    try:
        with ThreadedNpz(path) as npz:
            if IMAGE_KEY not in npz.files:
                raise DatasetError(f"{path}: missing key {IMAGE_KEY!r} (has: {', '.join(npz.files)})")
            image = npz[IMAGE_KEY]
    except READ_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable npz, corrupt or truncated ({_short(exc)}); re-copy the file") from exc
    problems = image_problems(image)
    if problems:
        raise DatasetError(f"{path}: {problems[0]}")
    return image.astype(np.float32)


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """np.load with pickles off, converting every failure to a DatasetError naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except READ_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable npz, corrupt or truncated ({_short(exc)}); re-copy the file") from exc


def read_split_records(files: list[Path]) -> list[Record]:
    """Records of every file, raising on the first invalid one (before any training starts)."""
    records = []
    for path in files:
        with open_npz(path) as npz:
            try:
                rec, problems = read_record(npz)
            except READ_ERRORS as exc:
                raise DatasetError(f"{path}: unreadable npz ({_short(exc)}); re-copy the file") from exc
        if rec is None:
            raise DatasetError(f"{path}: {problems[0]}")
        records.append(rec)
    return records


def keep_mask(records: list[Record], split: str) -> np.ndarray:
    """Which samples a split keeps: evaluation splits drop any sample with an unknown (−1) attribute."""
    codes = np.array([[r.attribute(a) for a in ATTRIBUTES] for r in records], dtype=np.int64)
    codes = codes.reshape(-1, len(ATTRIBUTES))
    if split not in EVAL_SPLITS:
        return np.ones(len(records), dtype=bool)
    return (codes != UNKNOWN).all(axis=1)


# ---------------------------------------------------------------- texts

def find_summary_csv(root: Path) -> Path | None:
    return next((root / n for n in SUMMARY_CSVS if (root / n).is_file()), None)


def split_text_source(text_source: str) -> tuple[str, str | None]:
    """("gpt4", "COLUMN") for `gpt4:COLUMN`, (source, None) otherwise."""
    base, sep, column = text_source.partition(":")
    return base, (column if sep else None)


def check_text_source(text_source: str) -> str:
    """`text_source` if it is one of TEXT_SOURCES or `gpt4:COLUMN`; a DatasetError naming the valid ones if not."""
    base, column = split_text_source(text_source)
    if base not in TEXT_SOURCES or (column is not None and (base != SUMMARY_SOURCE or not column.strip())):
        raise DatasetError(f"unknown text source {text_source!r}; choose one of {', '.join(TEXT_SOURCES)}, or "
                           f"{SUMMARY_SOURCE}:COLUMN to read the summary from that column of the summary CSV")
    return text_source


@dataclass
class Summaries:
    """The summary CSV read: file name → summary, and every problem worth a warning (duplicates, empty summaries,
    a second summary file that differs)."""

    path: Path
    texts: dict[str, str]
    problems: list[str]


def summary_columns(path: Path, header: list[str], column: str | None) -> tuple[int, int]:
    """(file-name column, summary column) of a summary CSV: a published header as FairCLIP reads it (0 and 2), or
    the column the user named; any other header is an error naming the columns found and the setting to use."""
    names = [h.strip() for h in header]
    found = ", ".join(repr(h) for h in names) or "none"
    if column is not None:
        if column.strip() not in names:
            raise DatasetError(f"{path}: no column {column.strip()!r} for text source {SUMMARY_SOURCE}:{column} "
                               f"(columns: {found})")
        picked = names.index(column.strip())
        if picked == 0:
            raise DatasetError(f"{path}: column {column.strip()!r} is column 0, which holds the file names")
        return 0, picked
    if tuple(names) in SUMMARY_LAYOUTS:
        return 0, 2
    published = " or ".join("(" + ", ".join(layout) + ")" for layout in SUMMARY_LAYOUTS)
    raise DatasetError(f"{path}: unknown summary layout (columns: {found}); the published header is {published}. "
                       f"Name the summary column with --text-source {SUMMARY_SOURCE}:COLUMN, or use text source "
                       "'note'")


def read_summary_header(root: Path, text_source: str = SUMMARY_SOURCE) -> None:
    """Check the summary CSV's header for `text_source` (a DatasetError if it is not usable), reading one line:
    the planner calls it so a bad layout stops a run before any job starts."""
    path = find_summary_csv(root)
    if path is None:
        return
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: unreadable CSV ({_short(exc)})") from exc
    summary_columns(path, header or [], split_text_source(text_source)[1])


def read_summaries(root: Path, text_source: str = SUMMARY_SOURCE) -> Summaries:
    """File name → summary from the summary CSV (see `summary_columns`), with its problems."""
    path = find_summary_csv(root)
    if path is None:
        raise DatasetError(f"{root}: missing GPT-4 summary CSV ({' or '.join(SUMMARY_CSVS)}); "
                           "add it or use text source 'note'")
    column = split_text_source(text_source)[1]
    rows = _summary_rows(path, column)
    texts: dict[str, str] = {}
    lines: dict[str, list[int]] = {}
    for line, name, summary in rows:
        texts[name] = summary  # the last row wins, as in FairCLIP's dict
        lines.setdefault(name, []).append(line)
    problems = []
    repeated = {n: ls for n, ls in lines.items() if len(ls) > 1}
    if repeated:
        name, where = next(iter(repeated.items()))
        differ = sum(len({r[2] for r in rows if r[1] == n}) > 1 for n in repeated)
        problems.append(f"{path}: {len(repeated)} file name(s) in more than one row (e.g. {name} in lines "
                        f"{', '.join(map(str, where))}; {differ} with different summaries); the last row is used — "
                        "keep one row per file")
    empty = [(line, name) for line, name, summary in rows if not summary]
    if empty:
        problems.append(f"{path}: {len(empty)} empty summar{'y' if len(empty) == 1 else 'ies'} (e.g. {empty[0][1]} "
                        f"in line {empty[0][0]}); those samples train on an empty text — fill them in or use text "
                        "source 'note'")
    others = [root / n for n in SUMMARY_CSVS if (root / n).is_file() and root / n != path]
    for other in others:
        try:
            same = {n: t for _, n, t in _summary_rows(other, column)} == texts
        except DatasetError:
            same = False
        if not same:
            problems.append(f"{root}: {path.name} and {other.name} both exist and differ; {path.name} is used — "
                            f"delete the one that is not meant")
    return Summaries(path, texts, problems)


def _summary_rows(path: Path, column: str | None) -> list[tuple[int, str, str]]:
    """(line, file name, summary) of every row of a summary CSV."""
    out = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = csv.reader(fh)
            header = next(rows, None)
            if header is None:
                raise DatasetError(f"{path}: empty file; expected a header and one row per sample")
            name_col, summary_col = summary_columns(path, header, column)
            need = max(name_col, summary_col) + 1
            for line, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) < need:
                    raise DatasetError(f"{path}: line {line} has {len(row)} columns, expected ≥ {need}")
                out.append((line, row[name_col].strip(), row[summary_col].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: unreadable CSV ({_short(exc)})") from exc
    return out


def truncate_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """FairCLIP's cut: longer texts are cut to max_chars, then back to the last space.

    FairCLIP slices to `rfind(' ')`, which drops one character when there is no space at all; here a
    text without a space keeps its first max_chars characters.
    """
    if len(text) <= max_chars:
        return text
    text = text[:max_chars]
    cut = text.rfind(" ")
    return text[:cut] if cut > 0 else text


def demographics_phrase(rec: Record) -> str:
    """The patient's demographics in words, unknown values left out, e.g. '67-year-old Black
    non-Hispanic female, Spanish-speaking.'"""
    words = {"race": ATTRIBUTE_GROUPS["race"], "ethnicity": {0: "non-Hispanic", 1: "Hispanic"},
             "gender": {0: "female", 1: "male"}}
    parts = [f"{int(rec.age)}-year-old"] if np.isfinite(rec.age) else []
    parts += [words[a][rec.attribute(a)] for a in words if rec.attribute(a) != UNKNOWN]
    phrase = " ".join(parts) or "patient of unknown demographics"
    if rec.language != UNKNOWN:
        lang = ATTRIBUTE_GROUPS["language"][rec.language]
        phrase += ", speaks another language" if lang == "Other" else f", {lang}-speaking"
    return phrase + "."


def build_texts(root: Path, files: list[Path], records: list[Record], text_source: str,
                summaries: Summaries | None = None) -> list[str]:
    """Training text of every sample for `text_source`, before truncation (`summaries`: the CSV already read)."""
    check_text_source(text_source)
    if split_text_source(text_source)[0] == SUMMARY_SOURCE:
        summaries = summaries or read_summaries(root, text_source)
        missing = [f.name for f in files if f.name not in summaries.texts]
        if missing:
            raise DatasetError(f"{summaries.path}: no summary row for {missing[0]} "
                               f"({len(missing)} file(s) missing); regenerate the CSV or use text source 'note'")
        return [summaries.texts[f.name] for f in files]
    texts = []
    for path, rec in zip(files, records, strict=True):
        if rec.note is None:
            raise DatasetError(f"{path}: missing key 'note' needed by text source {text_source!r}; use 'gpt4'")
        note = rec.note.strip()
        texts.append(note if text_source == "note" else f"{demographics_phrase(rec)} {note}")
    return texts
