"""Damage suite, training text and split contents: nothing is guessed or dropped silently.

Before (v0.2), `data check` said "no problems found" for all of these, and a run trained on them: the summary
column chosen by a header heuristic with a positional fallback (so the notes, or a column of numbers, were
trained on), duplicate rows (the last won), empty summaries and two differing summary CSVs unmentioned, a sample
saved as `.NPZ` dropped from its split, the same sample in two splits unreported.
After: a summary CSV must carry a published header (or the user names the column: `--text-source gpt4:COLUMN`);
duplicates, empties and a second file are problems in `data check` and warnings in a run; `.NPZ` and cross-split
samples are problems in `data check` and errors that stop a run before it trains.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.datasets import DatasetError
from tests.helpers import copy_dataset, load_small, rewrite_summaries, small_synthetic, summary_rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("damage-text"))


@pytest.fixture
def root(dataset, tmp_path) -> Path:
    copy_dataset(dataset, tmp_path / "ds-original")
    return copy_dataset(dataset, tmp_path / "work" / "ds")


def check(root: Path) -> tuple[int, list[str]]:
    """`fairbench data check`'s exit code and its problem lines."""
    r = CliRunner().invoke(app, ["data", "check", str(root)])
    assert "Traceback" not in r.output
    return r.exit_code, [line.strip()[2:] for line in r.output.splitlines() if line.strip().startswith("- ")]


@pytest.mark.parametrize("header,summary_at", [
    (["filename", "gpt4", "note"], 1),  # the summary headed `gpt4`, elsewhere: v0.2 trained on column 2, the notes
    (["filename", "note", "summary_len", "gpt4_summary"], 3),  # v0.2 took the first "summar" column: numbers
])
def test_a_summary_layout_that_is_not_published_is_an_error_until_the_column_is_named(root, tmp_path, header,
                                                                                          summary_at):
    from fairbench.datasets.fairvlmed.format import truncate_text

    original = summary_rows(root)
    rows = []
    for name, note, summary in original:
        row = {"filename": name, "note": note, "gpt4": summary, "gpt4_summary": summary,
               "summary_len": str(len(summary))}
        rows.append([row[h] for h in header])
    csv_path = rewrite_summaries(root, header, rows)
    found = ", ".join(repr(h) for h in header)
    message = (f"{csv_path}: unknown summary layout (columns: {found}); the published header is (File Name, Original "
               "Note, Summarized Note) or (filename, note, gpt4_summary). Name the summary column with --text-source "
               "gpt4:COLUMN, or use text source 'note'")
    with pytest.raises(DatasetError) as err:
        load_small(root, tmp_path / "c")
    assert str(err.value) == message
    code, problems = check(root)
    assert code == 1 and problems == [message]
    r = CliRunner().invoke(app, ["run", "--method", "clip", "--data", str(root), "--out", str(tmp_path / "out"),
                                 "--dry-run"])
    assert r.exit_code == 2 and r.output.strip() == f"error: {message}"  # at planning: before any job
    picked = load_small(root, tmp_path / "c", text_source=f"gpt4:{header[summary_at]}")
    expected = {name: truncate_text(summary) for name, _, summary in original}
    assert picked.train.texts == [expected[name] for name in picked.train.sample_ids]


def test_both_published_headers_are_read_as_fairclip_reads_them(root, tmp_path):
    """Column 0 the file name, column 2 the summary (FairCLIP's `row.iloc[0]`, `row.iloc[2]`)."""
    from fairbench.datasets.fairvlmed.format import truncate_text

    rows = summary_rows(root)
    by_name = {name: truncate_text(summary) for name, _, summary in rows}
    for header in (["File Name", "Original Note", "Summarized Note"], ["filename", "note", "gpt4_summary"]):
        rewrite_summaries(root, header, rows)
        data = load_small(root, tmp_path / header[0])
        assert data.train.texts == [by_name[name] for name in data.train.sample_ids]


def _problem_cases(root: Path) -> dict[str, str]:
    rows = summary_rows(root)
    header = ["filename", "note", "gpt4_summary"]
    csv_path = root / "gpt-4_summarized_notes.csv"
    first, second = rows[0][0], rows[1][0]
    return {
        "duplicates": (header, rows + [[first, "n", "another summary"]],
                       f"{csv_path}: 1 file name(s) in more than one row (e.g. {first} in lines 2, {len(rows) + 2}; 1 "
                       "with different summaries); the last row is used — keep one row per file"),
        "empty": (header, [[n, note, "" if n == second else s] for n, note, s in rows],
                  f"{csv_path}: 1 empty summary (e.g. {second} in line 3); those samples train on an empty text — "
                  "fill them in or use text source 'note'"),
    }


@pytest.mark.parametrize("case", ["duplicates", "empty", "second file"])
def test_duplicate_and_empty_summaries_and_a_second_summary_file_are_problems_and_run_warnings(root, tmp_path, case,
                                                                                               caplog):
    if case == "second file":
        other = root / "gpt4_summarized_notes.csv"
        shutil.copy(root / "gpt-4_summarized_notes.csv", other)
        assert check(root) == (0, [])  # the same contents: no problem
        rows = summary_rows(root)
        rows[4][2] = "a different summary"
        rewrite_summaries(root, ["filename", "note", "gpt4_summary"], rows)
        shutil.move(root / "gpt-4_summarized_notes.csv", other)
        shutil.copy(root.parent.parent / "ds-original" / "gpt-4_summarized_notes.csv", root)
        message = (f"{root}: gpt-4_summarized_notes.csv and gpt4_summarized_notes.csv both exist and differ; "
                   "gpt-4_summarized_notes.csv is used — delete the one that is not meant")
    else:
        header, rows, message = _problem_cases(root)[case]
        rewrite_summaries(root, header, rows)
    code, problems = check(root)
    assert code == 1 and problems == [message]
    with caplog.at_level(logging.WARNING, logger="fairbench.data"):
        load_small(root, tmp_path / "c")  # a warning, not an error: the run goes on
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [message]


def _is_a_problem_and_stops_loading(root, tmp_path, message: str) -> None:
    """`data check` lists `message` among its problems, and loading the dataset raises it."""
    code, problems = check(root)
    assert code == 1 and message in problems
    with pytest.raises(DatasetError) as err:
        load_small(root, tmp_path / "c")
    assert str(err.value) == message


def test_a_sample_saved_as_npz_in_capitals_is_a_problem_and_stops_a_run(root, tmp_path):
    victim = sorted((root / "Test").glob("*.npz"))[2]
    renamed = victim.with_suffix(".NPZ")
    victim.rename(renamed)
    message = f"{renamed}: sample saved with the suffix '.NPZ', which is not read; rename it to {victim.name}"
    _is_a_problem_and_stops_loading(root, tmp_path, message)
    r = CliRunner().invoke(app, ["run", "--method", "clip", "--data", str(root), "--out", str(tmp_path / "o"),
                                 "--dry-run"])
    assert r.exit_code == 2 and r.output.strip() == f"error: {message}"


@pytest.mark.parametrize("how", ["same name", "same bytes"])
def test_one_sample_in_two_splits_is_a_problem_and_stops_a_run(root, tmp_path, how):
    source = sorted((root / "Training").glob("*.npz"))[0]
    copy = root / "Test" / (source.name if how == "same name" else "data_99999.npz")
    shutil.copy(source, copy)
    if how == "same bytes":  # renamed: caught by its content digest (and given a summary row, so only that is wrong)
        with open(root / "gpt-4_summarized_notes.csv", "a", encoding="utf-8") as fh:
            fh.write(f"{copy.name},n,a summary\n")
    what = "the same file name" if how == "same name" else "identical bytes"
    message = f"{source} and {copy}: one sample in two splits ({what}); keep it in one split"
    _is_a_problem_and_stops_loading(root, tmp_path, message)
