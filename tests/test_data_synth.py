"""Synthetic FairVLMed: real format, deterministic bytes, the measured population, a visible and biased
signal, and the `data synth` / `data check` commands."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from fairbench.datasets import DatasetError
from fairbench.datasets.fairvlmed import FairVLMed
from fairbench.datasets.fairvlmed import synth as synth_mod
from fairbench.datasets.fairvlmed.load import load_fairvlmed
from fairbench.datasets.fairvlmed.synth import (
    _fundus_batch,
    _notes,
    _population,
    default_synthetic_dataset,
    is_synthetic,
    make_synthetic,
)


def resolve_dataset_path(data):
    return FairVLMed().resolve(data)

SMALL = {"n_train": 10, "n_val": 6, "n_test": 8, "size": 32}


def tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t)] for t in texts], dtype=torch.long)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = tree_bytes(make_synthetic(tmp_path / "a", seed=3, **SMALL))
    b = tree_bytes(make_synthetic(tmp_path / "b", seed=3, **SMALL))
    c = tree_bytes(make_synthetic(tmp_path / "c", seed=4, **SMALL))
    assert len(a) == 24 + 3 and a == b  # 24 npz, two CSVs, the marker
    assert a["Training/data_00001.npz"] != c["Training/data_00001.npz"]


def test_synthetic_uses_the_real_on_disk_format(tmp_path):
    root = make_synthetic(tmp_path / "s", seed=0, **SMALL)
    assert is_synthetic(root) and not is_synthetic(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["Test", "Training", "Validation", "data_summary.csv",
                                                      "fairbench_synthetic.json", "gpt-4_summarized_notes.csv"]
    assert [len(list((root / f).glob("data_*.npz"))) for f in ("Training", "Validation", "Test")] == [10, 6, 8]
    with np.load(root / "Validation" / "data_00011.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {"slo_fundus", "glaucoma", "race", "gender", "ethnicity", "language",
                                  "maritalstatus", "age", "note", "note_extra"}
        img = npz["slo_fundus"]
        assert img.shape == (round(32 * 664 / 512), 32) and img.max() > 1
        for key in ("glaucoma", "race", "age", "note", "note_extra"):
            assert npz[key].shape == ()
        assert isinstance(npz["note"].item(), str) and "PERSON" in npz["note"].item()
    with open(root / "data_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus",
                             "note", "gpt4_summary", "glaucoma", "use"]
    assert [r["use"] for r in rows].count("validation") == 6
    data = load_fairvlmed(root, image_size=16, tokenize=tokenize, tokenizer_key="t", cache_dir=tmp_path / "c")
    assert data.synthetic and data.tag == "synthetic"
    assert len(data.train) == 10 and len(data.val) + data.val.n_dropped == 6


def test_population_matches_the_measured_design():
    pop = _population(40_000, np.random.default_rng(0))
    race, y, cdr = pop["race"], pop["glaucoma"], pop["cdr"]
    assert np.bincount(race, minlength=3) / len(race) == pytest.approx([0.08, 0.15, 0.77], abs=0.01)
    assert y[race == 1].mean() == pytest.approx(0.65, abs=0.02)
    assert y[race != 1].mean() == pytest.approx(0.48, abs=0.02)
    other = race != 1
    assert cdr[other & (y == 1)].mean() == pytest.approx(0.72, abs=0.01)
    assert cdr[other & (y == 0)].mean() == pytest.approx(0.38, abs=0.01)
    assert cdr[other & (y == 0)].std() == pytest.approx(0.12, abs=0.01)
    assert cdr[(race == 1) & (y == 0)].std() == pytest.approx(0.20, abs=0.015)  # the planted spread
    for key in ("ethnicity", "language"):
        assert 0.005 < (pop[key] == -1).mean() < 0.05  # some unknowns, dropped from evaluation
    assert 0.02 < (pop["ethnicity"] == 1).mean() < 0.1  # small Hispanic group
    assert 0.005 < (pop["language"] == 2).mean() < 0.03  # small "Other" language group
    assert (pop["language"][pop["ethnicity"] == 1] == 1).mean() > (pop["language"] == 1).mean()


def test_summaries_state_the_diagnosis_in_the_prompt_words():
    pop = _population(3000, np.random.default_rng(1))
    summaries, notes, extras = _notes(pop, np.random.default_rng(2))
    y = pop["glaucoma"]
    has_non = np.array(["non-glaucoma" in s for s in summaries])
    has_plain = np.array(["glaucoma" in s.replace("non-glaucoma", "") for s in summaries])
    assert not has_non[y == 1].any()  # glaucoma notes never say "non-glaucoma"
    assert not has_plain[y == 0].any()  # normal notes never say "glaucoma" on its own
    stated = np.where(y == 1, has_plain, has_non)
    assert stated.mean() == pytest.approx(0.70, abs=0.03)
    assert len(set(summaries)) > 2000 and all(len(n) > len(s) for n, s in zip(notes, summaries, strict=True))


def test_cup_signal_is_visible_and_weaker_for_the_biased_group():
    """An image-only oracle (area of the bright cup) must separate the classes, less well for Black
    patients (wider CDR spread plus degradation): the data is learnable and biased."""
    pop = _population(4000, np.random.default_rng(0))
    idx = np.concatenate([np.flatnonzero(pop["race"] == 1)[:300], np.flatnonzero(pop["race"] == 2)[:300]])
    black = pop["race"][idx] == 1
    imgs = _fundus_batch(pop["cdr"][idx], black, 83, 64, np.random.default_rng(1)).astype(np.float32)
    median = np.median(imgs.reshape(len(idx), -1), axis=1)[:, None, None]
    cup_area = (imgs > median + 68).sum(axis=(1, 2))  # brighter than disc rim (+38) + half the cup step
    y = pop["glaucoma"][idx]
    auc_white, auc_black = roc_auc_score(y[~black], cup_area[~black]), roc_auc_score(y[black], cup_area[black])
    assert auc_white > 0.85
    assert auc_black < auc_white - 0.03
    assert imgs[black].mean() < imgs[~black].mean()  # darker


def test_bad_synth_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DatasetError, match="not empty"):
        make_synthetic(tmp_path / "full", **SMALL)
    with pytest.raises(DatasetError, match="≥ 1 sample"):
        make_synthetic(tmp_path / "new", n_train=0)


def test_default_synthetic_dataset_is_built_once_and_resolved(tmp_path, monkeypatch):
    monkeypatch.setattr(synth_mod, "DEFAULTS", {**SMALL, "seed": 0})
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FAIRBENCH_DATA", raising=False)
    path = default_synthetic_dataset()
    assert is_synthetic(path) and path.parent == tmp_path / "cache" / "synthetic"

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth_mod, "make_synthetic", boom)
    assert default_synthetic_dataset() == path
    assert resolve_dataset_path(None) == path
    monkeypatch.setenv("FAIRBENCH_DATA", str(tmp_path))
    assert resolve_dataset_path(None) == tmp_path.resolve()
    assert resolve_dataset_path(str(path)) == path.resolve()
    with pytest.raises(DatasetError, match="nowhere: dataset folder not found"):
        resolve_dataset_path(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- CLI

def _cli():
    from fairbench.commands.data import app

    return app


def test_cli_synth_passes_only_the_given_options(tmp_path, monkeypatch):
    """Options left out keep the generator's defaults (the CLI holds no copy of them)."""
    seen = {}
    monkeypatch.setattr(synth_mod, "make_synthetic", lambda out, **kw: seen.update(kw) or out)
    res = CliRunner().invoke(_cli(), ["synth", str(tmp_path / "s"), "--n-val", "7", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert seen == {"n_val": 7, "seed": 2}


def test_cli_synth_then_check_reports_requested_counts(tmp_path):
    runner = CliRunner()
    out = tmp_path / "syn"
    res = runner.invoke(_cli(), ["synth", str(out), "--n-train", "12", "--n-val", "7", "--n-test", "9",
                                 "--size", "32", "--seed", "5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_cli(), ["check", str(out)])
    assert res.exit_code == 0, res.output
    counts = dict(re.findall(r"^(\w+)/: (\d+) files", res.output, flags=re.M))
    assert counts == {"Training": "12", "Validation": "7", "Test": "9"}
    assert "no problems found" in res.output
    # the race rows of the table add up to the split size (no, yes columns per split)
    race_rows = [list(map(int, re.findall(r"\d+", line))) for line in res.output.splitlines()
                 if re.match(r"^│ race", line)]
    assert [sum(r[2 * i] + r[2 * i + 1] for r in race_rows) for i in range(3)] == [12, 7, 9]


def test_cli_check_lists_every_problem_and_exits_1(tmp_path):
    root = make_synthetic(tmp_path / "s", seed=0, **SMALL)
    truncated = root / "Training" / "data_00002.npz"
    truncated.write_bytes(truncated.read_bytes()[:100])
    np.savez(root / "Training" / "data_00003.npz", slo_fundus=np.ones((4, 4)) * 0.5, glaucoma=np.array(3),
             race=np.array(9), gender=np.array(0), ethnicity=np.array(0))
    np.savez(root / "Test" / "data_00099.npz", slo_fundus=np.ones((2, 4, 4)) * 50, glaucoma=np.array(1),
             race=np.array(0), gender=np.array(0), ethnicity=np.array(0), language=np.array(0))
    (root / "Validation").rename(root / "valid")
    res = CliRunner().invoke(_cli(), ["check", str(root)])
    assert res.exit_code == 1
    out = " ".join(res.output.split())  # undo wrapping
    for expected in ("data_00002.npz: unreadable npz, corrupt or truncated",
                     "data_00003.npz: missing key(s) language",
                     "data_00003.npz: glaucoma=3 is not a valid label",
                     "data_00003.npz: race=9 is not a valid attribute code",
                     "data_00003.npz: slo_fundus looks like a 0–1 scale image",
                     "data_00099.npz: slo_fundus has shape (2, 4, 4)",
                     "data_00099.npz: no row in gpt-4_summarized_notes.csv",
                     "missing split folder Validation/",
                     "rename valid/ to Validation/"):
        assert expected in out, expected
    assert "Training/: 10 files, 8 valid" in out


def test_cli_synth_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").write_text("")
    res = CliRunner().invoke(_cli(), ["synth", str(tmp_path)])
    assert res.exit_code == 1 and "not empty" in res.output


@pytest.mark.slow
def test_cli_module_imports_no_heavy_libraries():
    import subprocess
    import sys

    code = ("import sys, fairbench.commands.data; "
            "print(sorted(m for m in ('numpy', 'torch', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
