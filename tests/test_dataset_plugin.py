"""A second dataset, registered only through --plugin, runs run → table → metrics with its own attributes,
group names and prompts; the dataset registry's rules; and the core names no dataset."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.datasets import DatasetError, resize_center_crop, tensors_from_arrays

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "plugins" / "toy_dataset.py"
FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def toy_results(tmp_path_factory) -> Path:
    """One `run` on the toy dataset, generated on first use under the (per-session) cache."""
    out = tmp_path_factory.mktemp("toy") / "results"
    r = invoke("run", "--dataset", "toy", "--plugin", TOY, "--method", "clip,fairclip", "--seeds", "1",
               "--out", out, *FAST)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.slow
def test_toy_dataset_runs_with_its_own_attributes_and_groups(toy_results):
    results = sorted(toy_results.rglob("result.json"))
    records = [json.loads(p.read_text()) for p in results]
    # clip once, fairclip once per toy attribute; every folder under the toy's own tag
    assert sorted((r["method"], r["attribute"]) for r in records) == [
        ("clip", None), ("fairclip", "age_band"), ("fairclip", "site")]
    assert all(p.relative_to(toy_results).parts[0] == "toy" for p in results)
    for rec in records:
        assert rec["dataset"]["name"] == "toy" and rec["dataset"]["tag"] == "toy"
        assert rec["dataset"]["n"] == {"train": 64, "val": 32, "test": 48}
        test = rec["metrics"]["test"]
        assert list(test["attributes"]) == ["site", "age_band"]  # the dataset's order
        assert list(test["attributes"]["site"]["groups"]) == ["arm", "leg", "torso"]
        assert list(test["attributes"]["age_band"]["groups"]) == ["under-50", "50-plus"]
    clip = next(p for p, r in zip(results, records, strict=True) if r["method"] == "clip")
    with open(clip.parent / "predictions_test.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["sample", "label", "score", "site", "age_band"]


@pytest.mark.slow
def test_toy_table_shows_only_toy_runs_with_toy_attributes(toy_results, tmp_path):
    table = invoke("table", "--out", toy_results, "--dataset", "toy", "--format", "markdown")
    assert table.exit_code == 0, table.output
    assert "attribute: site" in table.output and "attribute: age_band" in table.output
    assert "dataset: toy" in table.output and "fairclip" in table.output
    ablation = invoke("table", "--out", toy_results, "--dataset", "toy", "--layout", "ablation", "--format",
                      "markdown")
    assert ablation.exit_code == 0 and "ES-AUC site" in ablation.output
    missing = invoke("table", "--out", toy_results, "--dataset", "fairvlmed")
    assert missing.exit_code == 1 and "present: toy (tag toy)" in missing.output


@pytest.mark.slow
def test_toy_metrics_command_names_toy_groups(toy_results):
    (preds,) = [p for p in toy_results.rglob("predictions_test.csv") if "/clip/" in str(p)]
    r = invoke("metrics", preds, "--dataset", "toy", "--plugin", TOY)
    assert r.exit_code == 0, r.output
    for word in ("site", "age_band", "arm", "torso", "under-50", "50-plus"):
        assert word in r.output, word
    as_json = invoke("metrics", preds, "--dataset", "toy", "--plugin", TOY, "--json")
    suite = json.loads(as_json.stdout)
    assert list(suite["attributes"]["site"]["groups"]) == ["arm", "leg", "torso"]
    # without the toy dataset the default dataset's attribute columns are not in the file
    plain = invoke("metrics", preds)
    assert plain.exit_code == 0 and "no attribute columns found" in plain.output


def test_toy_data_commands_and_attribute_errors(tmp_path):
    listed = invoke("data", "list", "--plugin", TOY)
    assert listed.exit_code == 0, listed.output
    assert "toy" in listed.output and "(default)" in listed.output and "arm, leg, torso" in listed.output
    made = invoke("data", "synth", tmp_path / "t", "--dataset", "toy", "--plugin", TOY, "--n-train", "5")
    assert made.exit_code == 0, made.output
    with np.load(tmp_path / "t" / "train.npz") as f:
        assert f["labels"].shape == (5,)
    check = invoke("data", "check", tmp_path / "t", "--dataset", "toy", "--plugin", TOY)
    assert check.exit_code == 2 and "has no checker" in check.output
    bad = invoke("run", "--dataset", "toy", "--plugin", TOY, "--method", "fairclip", "--attr", "race", "--dry-run")
    assert bad.exit_code == 2 and re.search(r"unknown attribute 'race'.*site, age_band", bad.output), bad.output
    unknown = invoke("run", "--dataset", "toyy", "--plugin", TOY, "--method", "clip", "--dry-run")
    assert unknown.exit_code == 2 and "Did you mean 'toy'" in unknown.output and "Traceback" not in unknown.output


def test_v01_results_without_a_dataset_name_are_found_by_tag(tmp_path):
    from fairbench.report.load import load_results
    from tests.helpers import write_run

    write_run(tmp_path, "clip", "b16", None, 0)  # tag fairvlmed, no dataset name: a v0.1 result file
    write_run(tmp_path, "clip", "b16", None, 0, dataset="synthetic", synthetic=True)
    write_run(tmp_path, "clip", "b16", None, 0, dataset="elsewhere")  # a tag no registered dataset owns
    names = sorted((r["dataset"]["tag"], r["dataset"]["name"]) for r in load_results(tmp_path).records)
    assert names == [("elsewhere", "elsewhere"), ("fairvlmed", "fairvlmed"), ("synthetic", "fairvlmed")]
    by_name = invoke("table", "--out", tmp_path, "--dataset", "fairvlmed", "--attr", "race")
    assert by_name.exit_code == 0 and "SYNTHETIC" in by_name.output and "dataset: fairvlmed" in by_name.output
    by_tag = invoke("table", "--out", tmp_path, "--dataset", "synthetic", "--attr", "race")
    assert by_tag.exit_code == 0 and "dataset: fairvlmed" not in by_tag.output and "dataset: synthetic" in by_tag.output


def test_dataset_tags_and_default_are_unique():
    from fairbench.datasets import Dataset
    from fairbench.registry import get_dataset, register_dataset

    with pytest.raises(ValueError, match="results tag 'synthetic' is already used by dataset"):
        @register_dataset("clash")
        class Clash(Dataset):
            synthetic_tag = "synthetic"
    with pytest.raises(ValueError, match="cannot be the default"):
        @register_dataset("second-default", default=True)
        class Second(Dataset):
            pass
    for name in ("clash", "second-default"):
        with pytest.raises(KeyError):
            get_dataset(name)  # a refused registration leaves nothing behind
    assert get_dataset(None).name == "fairvlmed"


# ---------------------------------------------------------------- tensors_from_arrays

def _tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), t.count(" ")] for t in texts], dtype=torch.long)


def test_tensors_from_arrays_matches_clip_resize_and_checks_inputs():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 30, 40), dtype=np.uint8)
    split = tensors_from_arrays(images, ["a b", "c", "d e f"], [0, 1, 1], {"site": [0, 2, -1]}, ["x", "y", "z"],
                                tokenize=_tokenize, image_size=16)
    assert split.images.shape == (3, 3, 16, 16) and split.images.dtype == torch.uint8
    assert split.sample_ids == ["x", "y", "z"] and split.labels.tolist() == [0, 1, 1]
    assert split.attributes["site"].tolist() == [0, 2, -1] and split.tokens[2].tolist() == [5, 2]
    # PIL's antialiased bicubic resize of the shorter side to 16, then a centre crop (CLIP's eval transform)
    for i in range(3):
        ref = np.asarray(Image.fromarray(images[i]).resize((21, 16), Image.BICUBIC), dtype=np.float64)[:, 2:18]
        assert np.abs(split.images[i, 0].double().numpy() - ref).mean() < 1.5
    rgb = tensors_from_arrays(rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8), ["a", "b"], [0, 1], {},
                              tokenize=_tokenize, image_size=8)
    assert rgb.images.shape == (2, 3, 8, 8) and rgb.sample_ids == ["0", "1"]
    for args, message in [((images.astype(np.float32), ["a"] * 3, [0, 1, 1], {}), "pass uint8"),
                          ((images, ["a"] * 2, [0, 1, 1], {}), "texts has 2 entries but there are 3 images"),
                          ((images, ["a"] * 3, [0, 1, 2], {}), "labels must be 0 or 1"),
                          ((images, ["a"] * 3, [0, 1, 1], {"site": [0, -2, 1]}), "attribute 'site' must hold")]:
        with pytest.raises(DatasetError, match=message):
            tensors_from_arrays(*args, tokenize=_tokenize, image_size=8)


def test_resize_center_crop_keeps_constant_images_and_crops_the_centre():
    flat = torch.full((1, 1, 12, 20), 77, dtype=torch.uint8)
    assert torch.equal(resize_center_crop(flat, 6), torch.full((1, 1, 6, 6), 77, dtype=torch.uint8))
    stripes = torch.zeros((1, 1, 10, 30), dtype=torch.uint8)
    stripes[..., 10:20] = 255  # the middle third is white: all the centre crop sees at the same scale
    assert torch.equal(resize_center_crop(stripes, 10), torch.full((1, 1, 10, 10), 255, dtype=torch.uint8))


# ---------------------------------------------------------------- the core names no dataset

def test_core_names_no_dataset():
    """Nothing in fairbench/ outside the FairVLMed package names its label, attributes or prompts (the
    package docstring of fairbench/__init__.py may name the built-in dataset once)."""
    pattern = r"glaucoma|fairvlmed|\brace\b|gender|ethnicity|language|non-glaucoma"
    found = subprocess.run(["grep", "-rniE", pattern, "fairbench/", "--include=*.py"], cwd=REPO,
                           capture_output=True, text=True).stdout.splitlines()
    outside = [line for line in found if not line.startswith("fairbench/datasets/fairvlmed/")]
    allowed = [line for line in outside if line.startswith("fairbench/__init__.py:") and "FairVLMed" in line]
    assert len(allowed) <= 1 and outside == allowed, "\n".join(outside)
