"""`fairbench data check`: read a whole dataset folder and report every problem, not just the first.

The loader stops at the first bad file; before a long run a researcher wants the full list (which
files are truncated, which lack a summary row) and the group × label counts that decide whether the
fairness metrics will mean anything.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fairbench.datasets.base import CheckReport, SplitReport
from fairbench.datasets.fairvlmed.format import (
    ATTRIBUTES,
    IMAGE_KEY,
    READ_ERRORS,
    SPLITS,
    UNKNOWN,
    DatasetError,
    Record,
    ThreadedNpz,
    _short,
    broken_links,
    find_split_dir,
    find_summary_csv,
    image_problems,
    layout_problem,
    misnamed_samples,
    read_record,
    read_summaries,
)


def _check_file(path: Path) -> tuple[Record | None, tuple[int, ...] | None, list[str], str]:
    """The record, image shape, problems and SHA-256 of one npz file."""

    from fairbench.digests import file_sha256

    try:
        digest = file_sha256(path)
    except OSError:
        digest = ""
    try:
        with ThreadedNpz(path) as npz:  # called from worker threads
            rec, problems = read_record(npz)
            shape = None
            if IMAGE_KEY in npz.files:
                image = npz[IMAGE_KEY]
                shape = tuple(image.shape)
                problems += image_problems(image)
    except READ_ERRORS as exc:
        return None, None, [f"unreadable npz, corrupt or truncated ({_short(exc)})"], digest
    return (rec if not problems else None), shape, problems, digest


def check_dataset(root: str | os.PathLike[str]) -> CheckReport:
    """Validate every split folder, file and summary row under root."""
    from fairbench.datasets.fairvlmed.load import shared_samples
    from fairbench.datasets.fairvlmed.synth import is_synthetic

    root = Path(root)
    report = CheckReport(root=root, synthetic=is_synthetic(root))
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found")
        return report
    summaries: dict[str, str] | None = None
    folders: dict[str, Path] = {}
    for split in SPLITS:
        try:
            found = find_split_dir(root, split)
        except DatasetError as exc:  # both Test/ and Testing/
            report.problems.append(str(exc))
            continue
        if found is not None:
            folders[split] = found
    missing = layout_problem(root)  # every missing folder and the CSV, in one line
    if missing:
        report.problems.append(missing)
    if find_summary_csv(root) is not None:
        try:
            summaries = read_summaries(root)
            report.problems += summaries.problems
        except DatasetError as exc:
            report.problems.append(str(exc))
    digests: dict[str, list[tuple[Path, str]]] = {}
    for split, folder in folders.items():
        rep = report.splits[split] = SplitReport(folder=folder.name)
        report.problems += broken_links(folder) + misnamed_samples(folder)
        files = sorted(p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file())
        rep.n_files = len(files)
        if not files:
            report.problems.append(f"{folder}: empty split (no .npz files)")
            continue
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            results = list(pool.map(_check_file, files))
        digests[split] = [(path, digest) for path, (*_, digest) in zip(files, results, strict=True) if digest]
        for path, (rec, shape, problems, _) in zip(files, results, strict=True):
            report.problems += [f"{path}: {p}" for p in problems]
            if summaries is not None and path.name not in summaries.texts:
                report.problems.append(f"{path}: no row in {summaries.path.name}")
            if shape is not None:
                rep.image_shapes[shape] += 1
            if rec is None:
                continue
            rep.n_valid += 1
            rep.n_positive += rec.glaucoma
            codes = {a: rec.attribute(a) for a in ATTRIBUTES}
            rep.n_unknown += any(c == UNKNOWN for c in codes.values())
            for attr, code in codes.items():
                rep.counts[(attr, code, rec.glaucoma)] += 1
    report.problems += shared_samples(digests)
    return report

