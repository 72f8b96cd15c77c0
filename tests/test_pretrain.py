"""The pretrained start of `tiny`: deterministic bytes, built once, used by default with its provenance recorded,
random init on request. (conftest shortens the recipe and the pretraining set.)"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.training import pretrain

FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


@pytest.mark.slow
def test_same_recipe_gives_the_same_bytes_and_a_second_call_does_not_retrain(tmp_path, monkeypatch):
    a = pretrain.pretraining_target("tiny", "fairvlmed", tmp_path / "a")
    b = pretrain.pretraining_target("tiny", "fairvlmed", tmp_path / "b")
    assert a.key == b.key and a.path != b.path
    first, second = pretrain.ensure_pretrained(a, tmp_path / "a"), pretrain.ensure_pretrained(b, tmp_path / "b")
    assert a.weights.read_bytes() == b.weights.read_bytes()
    assert first["sha256"] == second["sha256"] == hashlib.sha256(a.weights.read_bytes()).hexdigest()
    assert first["recipe"]["epochs"] == pretrain.RECIPE.epochs and first["dataset"] == "fairvlmed"

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached checkpoint")

    monkeypatch.setattr(pretrain, "_build", no_training)
    assert pretrain.ensure_pretrained(a, tmp_path / "a") == first


def test_a_changed_recipe_is_a_new_checkpoint(tmp_path, monkeypatch):
    before = pretrain.pretraining_target("tiny", "fairvlmed", tmp_path)
    monkeypatch.setattr(pretrain, "RECIPE", pretrain.PretrainRecipe(**{**vars(pretrain.RECIPE), "lr": 5e-4}))
    after = pretrain.pretraining_target("tiny", "fairvlmed", tmp_path)
    assert after.key != before.key and after.path != before.path


def test_hub_archs_have_no_pretraining_here(tmp_path):
    assert pretrain.pretraining_target("b16", "fairvlmed", tmp_path) is None


@pytest.mark.slow
def test_tiny_fine_tunes_from_the_checkpoint_by_default_and_from_random_init_on_request(dataset, tmp_path):
    runner = CliRunner()
    out = tmp_path / "results"
    r = runner.invoke(app, ["run", "--method", "clip", "--seeds", "1", "--data", str(dataset), "--out", str(out),
                            *FAST, "--set", "checkpoint=true"])
    assert r.exit_code == 0, r.output
    (default_result,) = out.rglob("result.json")
    record = json.loads(default_result.read_text())
    info = record["pretrained"]
    weights = Path(info["path"])
    assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["config"]["pretrained"] == "default" and record["config"]["pretraining"] == info["key"]
    # the default protocol freezes the token embedding: the fine-tuned model still holds the pretrained one
    tuned = torch.load(default_result.parent / "checkpoint.pt", weights_only=True)
    start = load_file(str(weights))
    assert torch.equal(tuned["token_embedding.weight"], start["token_embedding.weight"])
    assert not torch.equal(tuned["visual.conv1.weight"], start["visual.conv1.weight"])  # the towers trained

    r = runner.invoke(app, ["run", "--method", "clip", "--seeds", "1", "--data", str(dataset), "--out", str(out),
                            *FAST, "--set", "checkpoint=true", "--pretrained", "none"])
    assert r.exit_code == 0, r.output
    (random_result,) = set(out.rglob("result.json")) - {default_result}  # a new run folder, not a skip
    record = json.loads(random_result.read_text())
    assert record["pretrained"] == {"weights": "random init"} and "pretraining" not in record["config"]
    tuned = torch.load(random_result.parent / "checkpoint.pt", weights_only=True)
    assert not torch.equal(tuned["token_embedding.weight"], start["token_embedding.weight"])
