"""FairVLMed on-disk format: what load_fairvlmed returns from real-format fixtures, and each bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from fairbench.datasets import DatasetError
from fairbench.datasets.fairvlmed.format import ATTRIBUTE_GROUPS, truncate_text
from fairbench.datasets.fairvlmed.load import load_fairvlmed

LONG = ("The 71 y/o female patient has primary open angle glaucoma in both eyes with elevated pressure, "
        "thinning of the nerve fiber layer, visual field loss and a history of cataract surgery in the left eye.")


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    """Character codes of the first 24 characters: enough to tell texts apart, no model needed."""
    out = torch.zeros(len(texts), 24, dtype=torch.long)
    for i, t in enumerate(texts):
        codes = [ord(c) for c in t[:24]]
        out[i, : len(codes)] = torch.tensor(codes, dtype=torch.long)
    return out


fake_tokenize.context_length = 24  # type: ignore[attr-defined]


def write_sample(path: Path, *, image: np.ndarray | None = None, glaucoma=1, race=2, gender=0, ethnicity=0,
                 language=0, note: str = "original note text", drop: tuple[str, ...] = (), **extra) -> None:
    arrays = {
        "slo_fundus": np.full((40, 30), 120.0, dtype=np.float32) if image is None else image,
        "glaucoma": np.array(glaucoma), "race": np.array(race), "gender": np.array(gender),
        "ethnicity": np.array(ethnicity), "language": np.array(language), "maritalstatus": np.array(0),
        "age": np.array(63.25), "note": np.array(note), "note_extra": np.array("extra"), **extra,
    }
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if k not in drop})


# (split folder, file, fields): val has one unknown language, test uses the `Testing/` name and one
# unknown ethnicity; train keeps unknowns.
SAMPLES = {
    "Training": {"data_00003.npz": dict(glaucoma=1, race=1, language=-1),
                 "data_00001.npz": dict(glaucoma=0, race=0, gender=1),
                 "data_00002.npz": dict(glaucoma=1, race=2, ethnicity=1, language=1)},
    "Validation": {"data_00004.npz": dict(glaucoma=0, race=2),
                   "data_00005.npz": dict(glaucoma=1, race=1, language=-1)},
    "Testing": {"data_00006.npz": dict(glaucoma=1, race=0, language=2),
                "data_00007.npz": dict(glaucoma=0, race=2, ethnicity=-1),
                "data_00008.npz": dict(glaucoma=0, race=1, gender=1)},
}


def build_dataset(root: Path, csv_name: str = "gpt4_summarized_notes.csv") -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for folder, files in SAMPLES.items():
        (root / folder).mkdir(parents=True)
        for name, fields in files.items():
            image = rng.uniform(0, 255, size=(40, 30)).astype(np.float32)
            write_sample(root / folder / name, image=image, note=f"note of {name}", **fields)
            rows.append([name, f"note of {name}", f"  summary of {name}: " + ("non-glaucoma" if not
                                                                             fields["glaucoma"] else LONG)])
    with open(root / csv_name, "w", newline="") as fh:
        csv.writer(fh).writerows([["filename", "note", "gpt4_summary"], *rows])
    return root


def load(root: Path, tmp_path: Path, **kw):
    return load_fairvlmed(root, image_size=16, tokenize=fake_tokenize, tokenizer_key="fake",
                          cache_dir=tmp_path / "cache", **kw)


def test_loader_returns_sorted_splits_labels_attributes_and_texts(tmp_path):
    data = load(build_dataset(tmp_path / "ds"), tmp_path)
    assert not data.synthetic and data.tag == "fairvlmed" and len(data.fingerprint) == 16
    tr = data.train
    assert tr.sample_ids == ["data_00001.npz", "data_00002.npz", "data_00003.npz"]  # sorted, not listdir order
    assert tr.labels.tolist() == [0, 1, 1] and tr.labels.dtype == torch.long
    assert tr.attributes["race"].tolist() == [0, 2, 1]
    assert tr.attributes["language"].tolist() == [0, 1, -1]  # training keeps unknowns
    assert set(tr.attributes) == set(ATTRIBUTE_GROUPS)
    assert tr.images.shape == (3, 3, 16, 16) and tr.images.dtype == torch.uint8
    assert tr.tokens.shape == (3, 24) and tr.tokens.dtype == torch.long
    assert tr.n_dropped == 0
    # summaries come from column 2, stripped and cut at a word boundary
    assert tr.texts[0] == "summary of data_00001.npz: non-glaucoma"
    assert tr.texts[1] == truncate_text(f"summary of data_00002.npz: {LONG}")
    assert len(tr.texts[1]) <= 180 and tr.texts[1].endswith("visual field loss and")
    assert tr.tokens[0, :7].tolist() == [ord(c) for c in "summary"]


def test_eval_splits_drop_unknown_attributes_and_report_it(tmp_path):
    data = load(build_dataset(tmp_path / "ds"), tmp_path)
    assert data.val.sample_ids == ["data_00004.npz"] and data.val.n_dropped == 1
    assert data.test.sample_ids == ["data_00006.npz", "data_00008.npz"] and data.test.n_dropped == 1
    assert data.test.labels.tolist() == [1, 0]
    assert data.test.attributes["race"].tolist() == [0, 1]
    assert data.test.images.shape[0] == data.test.tokens.shape[0] == 2
    for split in (data.val, data.test):
        for codes in split.attributes.values():
            assert (codes >= 0).all()


def test_images_keep_order_after_the_filter(tmp_path):
    root = build_dataset(tmp_path / "ds")
    data = load(root, tmp_path)
    # test keeps files 6 and 8 of 6, 7, 8: its rows must be those images, not the first two
    from fairbench.datasets.cache import clip_transform_uint8

    for row, name in enumerate(data.test.sample_ids):
        with np.load(root / "Testing" / name) as npz:
            want = clip_transform_uint8(npz["slo_fundus"], 16)
        assert torch.equal(data.test.images[row, 0], torch.from_numpy(want))


def test_text_truncation_matches_fairclip_rule():
    assert truncate_text("short note") == "short note"
    text = "word " * 50
    cut = truncate_text(text)
    assert cut == text[:180][: text[:180].rfind(" ")] and len(cut) < 180
    assert truncate_text("x" * 200) == "x" * 180  # no space: keep 180 (FairCLIP would drop one more)


def test_text_sources_note_and_demographics(tmp_path):
    root = build_dataset(tmp_path / "ds")
    note = load(root, tmp_path, text_source="note")
    assert note.train.texts[0] == "note of data_00001.npz"
    demo = load(root, tmp_path, text_source="note+demographics")
    assert demo.train.texts[0] == "63-year-old Asian non-Hispanic male, English-speaking. note of data_00001.npz"
    # unknown language is left out, not printed as a code
    assert demo.train.texts[2] == "63-year-old Black non-Hispanic female. note of data_00003.npz"
    assert demo.train.texts[1].startswith("63-year-old White Hispanic female, Spanish-speaking.")
    assert not torch.equal(note.train.tokens, demo.train.tokens)  # token cache keyed by text source


def test_newer_summary_csv_name_and_real_resolution_float_images(tmp_path):
    root = tmp_path / "ds"
    for folder in ("Training", "Validation", "Test"):
        (root / folder).mkdir(parents=True)
    big = np.repeat(np.linspace(0, 255, 664)[:, None], 512, axis=1)  # real size, float64, 0–255
    write_sample(root / "Training" / "data_00001.npz", image=big)
    write_sample(root / "Validation" / "data_00002.npz")
    write_sample(root / "Test" / "data_00003.npz", glaucoma=0)
    with open(root / "gpt-4_summarized_notes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["File Name", "Original Note", "Summarized Note"],
                                   *[[f"data_0000{i}.npz", "n", f"s{i}"] for i in (1, 2, 3)]])
    data = load(root, tmp_path)
    assert data.train.texts == ["s1"] and data.test.texts == ["s3"]
    img = data.train.images[0, 0].float()
    # a vertical ramp: rows get brighter downwards, columns equal
    assert img[:, 0].diff().ge(0).all() and img[0].eq(img[0, 0]).all() and img.max() > 200


# ---------------------------------------------------------------- bad inputs

def _truncate(root: Path) -> None:
    p = root / "Training" / "data_00002.npz"
    p.write_bytes(p.read_bytes()[:200])


def _garble(root: Path) -> None:  # valid zip directory, damaged compressed data
    p = root / "Training" / "data_00002.npz"
    raw = bytearray(p.read_bytes())
    raw[100:140] = b"\x00" * 40
    p.write_bytes(bytes(raw))


def _rewrite(name: str, folder: str = "Training", **kw):
    def mutate(root: Path) -> None:
        write_sample(root / folder / name, **kw)
    return mutate


def _rm_csv(root: Path) -> None:
    (root / "gpt4_summarized_notes.csv").unlink()


def _drop_row(root: Path) -> None:
    p = root / "gpt4_summarized_notes.csv"
    p.write_text("".join(line for line in p.read_text().splitlines(True) if "data_00005.npz" not in line))


def _empty_val(root: Path) -> None:
    for f in (root / "Validation").iterdir():
        f.unlink()


def _rename_val(root: Path) -> None:
    (root / "Validation").rename(root / "val")


def _both_tests(root: Path) -> None:
    (root / "Test").mkdir()


BAD = {
    "truncated npz": (_truncate, "data_00002.npz: unreadable npz, corrupt or truncated"),
    "garbled npz": (_garble, "data_00002.npz: unreadable npz"),
    "missing key": (_rewrite("data_00001.npz", drop=("race",)), "data_00001.npz: missing key(s) race"),
    "missing image": (_rewrite("data_00001.npz", drop=("slo_fundus",)), "data_00001.npz: missing key(s) slo_fundus"),
    "3-D image": (_rewrite("data_00001.npz", image=np.full((8, 8, 3), 100.0)),
                  "data_00001.npz: slo_fundus has shape (8, 8, 3), expected a 2-D"),
    "0-1 image": (_rewrite("data_00001.npz", image=np.full((8, 8), 0.5)),
                  "data_00001.npz: slo_fundus looks like a 0–1"),
    "label 2": (_rewrite("data_00001.npz", glaucoma=2), "data_00001.npz: glaucoma=2 is not a valid label"),
    "race 7": (_rewrite("data_00001.npz", race=7), "data_00001.npz: race=7 is not a valid attribute code"),
    "missing csv": (_rm_csv, "missing GPT-4 summary CSV"),
    "missing row": (_drop_row, "no summary row for data_00005.npz"),
    "empty split": (_empty_val, "Validation: empty split"),
    "misnamed split": (_rename_val, "missing split folder Validation/ (found: Testing/, Training/, val/); "
                                    "rename val/ to Validation/"),
    "two test folders": (_both_tests, "both Test/ and Testing/ exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_one_line_dataset_error_naming_the_problem(tmp_path, case):
    mutate, expected = BAD[case]
    root = build_dataset(tmp_path / "ds")
    mutate(root)
    with pytest.raises(DatasetError) as err:
        load(root, tmp_path)
    msg = str(err.value)
    assert expected in msg and "\n" not in msg


def test_bad_input_in_a_cached_dataset_is_still_caught(tmp_path):
    root = build_dataset(tmp_path / "ds")
    load(root, tmp_path)  # everything cached
    _rewrite("data_00001.npz", image=np.full((8, 8), 0.5))(root)
    with pytest.raises(DatasetError, match="0–1 scale"):
        load(root, tmp_path)


def test_unknown_text_source_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown text source 'summary'"):
        load(build_dataset(tmp_path / "ds"), tmp_path, text_source="summary")
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load(tmp_path / "nowhere", tmp_path)


def test_note_source_needs_no_csv(tmp_path):
    root = build_dataset(tmp_path / "ds")
    _rm_csv(root)
    assert load(root, tmp_path, text_source="note").val.texts == ["note of data_00004.npz"]


ALL_PIECES = ("Training/", "Validation/", "Test/ (or Testing/)", "gpt-4_summarized_notes.csv")


def test_empty_data_folder_names_every_missing_piece_in_one_message(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as err:
        load(empty, tmp_path)
    msg = str(err.value)
    assert all(piece in msg for piece in ALL_PIECES), msg
    assert "\n" not in msg and "found: none" in msg
    with pytest.raises(DatasetError) as err:  # text source 'note' needs no CSV, so it is not asked for
        load(empty, tmp_path, text_source="note")
    assert all(piece in str(err.value) for piece in ALL_PIECES[:3]) and "summary CSV" not in str(err.value)


def test_run_and_data_check_list_every_missing_piece(tmp_path):
    from typer.testing import CliRunner

    from fairbench.cli import app

    empty = tmp_path / "empty"
    empty.mkdir()
    run = CliRunner().invoke(app, ["run", "--method", "clip", "--seeds", "1", "--data", str(empty),
                                   "--out", str(tmp_path / "out")])
    check = CliRunner().invoke(app, ["data", "check", str(empty)])
    for result in (run, check):
        text = " ".join(result.output.split())
        assert result.exit_code != 0 and all(piece in text for piece in ALL_PIECES), text
        assert "Traceback" not in result.output
    assert " ".join(check.output.split()).count("missing") == 1  # one problem line, not one per piece


def test_a_summary_csv_without_a_published_header_is_an_error_until_its_column_is_named(tmp_path):
    """No guessing: reordered published columns (or any other header) stop the load with the columns found and the
    setting that picks one; naming the column reads it, whatever its position."""
    root = build_dataset(tmp_path / "ds")
    csv_path = root / "gpt4_summarized_notes.csv"
    with open(csv_path, newline="") as fh:
        header, *rows = list(csv.reader(fh))
    order = [0, 2, 1]  # filename, gpt4_summary, note: the note would be column 2
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows([[header[i] for i in order], *[[r[i] for i in order] for r in rows]])
    with pytest.raises(DatasetError) as err:
        load(root, tmp_path)
    assert "unknown summary layout (columns: 'filename', 'gpt4_summary', 'note')" in str(err.value)
    assert "--text-source gpt4:COLUMN" in str(err.value)
    texts = load(root, tmp_path, text_source="gpt4:gpt4_summary").train.texts
    assert texts and all(t.startswith("summary of") for t in texts), texts
    with pytest.raises(DatasetError, match="no column 'summary' for text source gpt4:summary"):
        load(root, tmp_path, text_source="gpt4:summary")


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_symlinks_are_named_errors_in_run_and_data_check(tmp_path, kind):
    from typer.testing import CliRunner

    from fairbench.cli import app

    root = build_dataset(tmp_path / "ds")
    link = root / "Training" / "data_09999.npz"
    if kind == "dangling":
        link.symlink_to(root / "Training" / "missing.npz")
    else:
        link.symlink_to(link)
    words = "dangling symlink" if kind == "dangling" else "symlink loop"
    with pytest.raises(DatasetError, match=words):
        load(root, tmp_path)
    check = CliRunner().invoke(app, ["data", "check", str(root)])
    assert check.exit_code == 1 and words in check.output and "data_09999.npz" in check.output
    run = CliRunner().invoke(app, ["run", "--method", "clip", "--seeds", "1", "--data", str(root), "--text-source",
                                   "note", "--out", str(tmp_path / "out")])
    assert run.exit_code == 2 and words in run.output and "Traceback" not in run.output
