"""The planner (no tensors loaded), the one-job executor, the launcher interface and result provenance."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.cli import app

FAST = {"max_steps_per_epoch": "2", "batch_size": "16"}


def _plan(dataset: Path, out: Path, methods=("clip", "fairclip"), attrs=("race",), seeds=(0, 1), cache=None):
    from fairbench.registry import load_plugins
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    load_plugins()
    options = RunOptions(out=out, data=str(dataset), epochs=1, overrides=dict(FAST), cache_dir=cache)
    return plan(options, expand_jobs(list(methods), ["tiny"], list(attrs), list(seeds)))


def test_planning_loads_no_tensor_and_names_the_folder_a_run_writes(dataset, tmp_path, monkeypatch):
    import numpy as np

    from fairbench.runs.execute import execute

    cache = tmp_path / "cache"
    real_load = np.load

    def refuse(*args, **kwargs):
        raise AssertionError(f"planning read an array: {args[0]}")

    monkeypatch.setattr(np, "load", refuse)
    planned = _plan(dataset, tmp_path / "out", cache=cache)
    monkeypatch.setattr(np, "load", real_load)
    assert not list(cache.rglob("*.npy")), "planning built image or token caches"
    assert [p.label() for p in planned] == ["clip tiny - seed0", "clip tiny - seed1",
                                            "fairclip tiny race seed0", "fairclip tiny race seed1"]
    assert len({p.run_dir for p in planned}) == 4 and all(p.state() == "pending" for p in planned)
    # Executing the first job writes exactly where the plan said, with the planned hash.
    result = execute(planned[0], log=lambda _: None)
    assert result.status == "done"
    record = json.loads((planned[0].run_dir / "result.json").read_text())
    assert record["config_hash"] == planned[0].config_hash and planned[0].state() == "done"
    assert record["dataset"]["fingerprint"] == planned[0].data_fingerprint


def test_a_planned_job_pickles_and_executes_in_a_fresh_process_state(dataset, tmp_path):
    from fairbench.runs.execute import DataCache, execute

    planned = _plan(dataset, tmp_path / "out", methods=("fairclip",), seeds=(0,))[0]
    clone = pickle.loads(pickle.dumps(planned))
    assert clone.run_dir == planned.run_dir and clone.config == planned.config
    result = execute(clone, data_cache=DataCache(), log=lambda _: None)
    assert result.status == "done" and (planned.run_dir / "result.json").is_file()
    assert execute(planned, log=lambda _: None).status == "skipped"


def test_dry_run_lists_run_folders_and_states(dataset, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--method", "clip", "--seeds", "2", "--data", str(dataset), "--out", str(out), "--epochs", "1",
            "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]
    first = CliRunner().invoke(app, [*args[:4], "1", *args[5:]])  # seed 0 only
    assert first.exit_code == 0, first.output
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    lines = [line for line in dry.output.splitlines() if "clip tiny" in line]
    assert len(lines) == 2
    assert lines[0].startswith("done") and "seed0" in lines[0]
    assert lines[1].startswith("pending") and "seed1" in lines[1]
    done_dir = next(out.rglob("result.json")).parent
    assert str(done_dir) in dry.output.replace("\n", "")
    assert "2 job(s) (dry run): 1 done, 1 pending" in dry.output
    assert len(list(out.rglob("result.json"))) == 1  # the dry run trained nothing


def test_dry_run_marks_an_unreadable_result_invalid(dataset, tmp_path):
    planned = _plan(dataset, tmp_path / "out", methods=("clip",), seeds=(0,))[0]
    planned.run_dir.mkdir(parents=True)
    assert planned.state() == "started"
    planned.result_path.write_text("{not json")
    assert planned.state() == "invalid"


def test_unknown_launcher_is_a_one_line_error(tmp_path):
    from fairbench.launchers import get_launcher

    r = CliRunner().invoke(app, ["run", "--method", "clip", "--launcher", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown launcher 'nope'. Use one of local, slurm" in r.output
    with pytest.raises(ValueError, match="unknown launcher"):
        get_launcher("nope")


def test_result_records_the_code_commit(dataset, tmp_path, monkeypatch):
    from fairbench.runs import provenance
    from fairbench.runs.execute import execute

    planned = _plan(dataset, tmp_path / "out", methods=("clip",), seeds=(0,))[0]
    execute(planned, log=lambda _: None)
    code = json.loads(planned.result_path.read_text())["code"]
    if provenance._git("rev-parse", "HEAD") is None:
        pytest.skip("not running from a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}", code["git_commit"]) and isinstance(code["git_dirty"], bool)
    # Outside a checkout of fairbench itself, nothing is claimed.
    provenance.code_version.cache_clear()
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", tmp_path)
    assert provenance.code_version() == {}
    provenance.code_version.cache_clear()


def test_arch_training_defaults_come_from_the_arch_description():
    from fairbench.models.archs import PROTOCOL_TRAIN_DEFAULTS, get_arch
    from fairbench.training.trainer import TrainSettings

    assert get_arch("b16").train_defaults == PROTOCOL_TRAIN_DEFAULTS
    assert get_arch("ViT-B-32").train_defaults == PROTOCOL_TRAIN_DEFAULTS  # any other open_clip name
    assert TrainSettings(**get_arch("tiny").train_defaults).optimizer == "adamw"
    source = Path(__file__).parents[1].joinpath("fairbench", "training", "trainer.py").read_text()
    assert "tiny" not in source and "arch ==" not in source


def test_trainable_parameters_hook_decides_what_the_optimiser_updates(dataset, tmp_path):
    """A method that trains only the image tower leaves every text parameter bit-identical."""
    import torch
    from fairbench_methods.fairclip import CLIPFineTune

    from fairbench.method import Method
    from fairbench.models import create_backbone
    from fairbench.runs.execute import DataCache
    from fairbench.training.trainer import SplitData, TrainSettings, train

    class VisualOnly(CLIPFineTune):
        def trainable_parameters(self, model):
            return model.visual.parameters()

    planned = _plan(dataset, tmp_path / "out", methods=("clip",), seeds=(0,))[0]
    data = DataCache().get(planned)
    torch.manual_seed(0)
    model = create_backbone("tiny", pretrained=None).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = lambda s: SplitData(s.images, s.tokens, s.labels)  # noqa: E731
    settings = TrainSettings(epochs=1, batch_size=16, optimizer="adamw", lr=1e-3, max_steps_per_epoch=2)
    train(VisualOnly(), model, settings, train_data=split(data.train), val_data=split(data.val),
          test_data=split(data.test), normalize=lambda x: x.float() / 255, tokenize=lambda t: data.train.tokens[:2],
          prompts=("a", "b"), seed=0, device=torch.device("cpu"), auc=lambda y, s: 0.5)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("visual.") for k in changed), sorted(changed)[:5]
    assert isinstance(Method().group_batch_size(), type(None))


def test_group_batch_size_is_read_from_the_method(dataset, tmp_path):
    import torch
    from fairbench_methods.fairclip import FairCLIP

    from fairbench.models import create_backbone
    from fairbench.runs.execute import DataCache
    from fairbench.training.trainer import SplitData, TrainSettings, train

    planned = _plan(dataset, tmp_path / "out", methods=("fairclip",), seeds=(0,))[0]
    data = DataCache().get(planned)
    method = FairCLIP(FairCLIP.Settings(group_batch_size=5), "race", 3)
    sizes = []
    inner = method.loss_terms

    def recording(model, batch, group_batches):
        sizes.extend(gb.labels.shape[0] for gb in group_batches.values())
        return inner(model, batch, group_batches)

    method.loss_terms = recording
    torch.manual_seed(0)
    model = create_backbone("tiny", pretrained=None).model
    groups = lambda s: SplitData(s.images, s.tokens, s.labels, s.attributes["race"])  # noqa: E731
    settings = TrainSettings(epochs=1, batch_size=16, max_steps_per_epoch=1)
    train(method, model, settings, train_data=groups(data.train), val_data=groups(data.val),
          test_data=groups(data.test), normalize=lambda x: x.float() / 255, tokenize=lambda t: data.train.tokens[:2],
          prompts=("a", "b"), seed=0, device=torch.device("cpu"), auc=lambda y, s: 0.5)
    assert sizes and set(sizes) == {5}


@pytest.mark.parametrize("name", ["clip", "fairmoe"])
def test_protocol_freezes_the_clip_parts_wherever_a_method_nests_clip(name):
    """FairCLIP's optimiser holds the towers only; Fair-MoE wraps CLIP as `clip.`, and must freeze the same parts."""
    from fairbench.models import create_backbone
    from fairbench.models.archs import CLIP_FROZEN
    from fairbench.registry import get_method, load_plugins
    from fairbench.training.trainer import _unfrozen

    load_plugins()
    cls = get_method(name)
    model = cls(cls.Settings(), "race", 3).build(create_backbone("tiny", pretrained=None).model)
    kept = {id(p) for p in _unfrozen(model.parameters(), model, CLIP_FROZEN)}
    frozen = sorted(n.removeprefix("clip.") for n, p in model.named_parameters() if id(p) not in kept)
    assert frozen == sorted(["positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                             "ln_final.weight", "ln_final.bias"])
    trained = {n for n, p in model.named_parameters() if id(p) in kept}
    assert any("visual.positional_embedding" in n for n in trained)  # the vision tower trains whole
