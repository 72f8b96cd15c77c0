"""Usage modes (issue 21): zero-shot, linear probe, LoRA adapters, and medical-CLIP (local-dir:, HF text tower)
backbones, each checked against an independent reference (a plain loop, open_clip loaded directly, peft's own
forward) and end to end through the CLI."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fairbench.cli import app

runner = CliRunner()
FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def scores_of(run_dir: Path, split: str = "test") -> dict[str, float]:
    with open(run_dir / f"predictions_{split}.csv") as fh:
        return {row["sample"]: float(row["score"]) for row in csv.DictReader(fh)}


def tiny_model(seed: int = 0):
    import open_clip

    from fairbench.models.archs import TINY_CFG

    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CFG)


# ---------------------------------------------------------------- zero-shot


def fairclip_style_pth(model, path: Path) -> Path:
    """FairCLIP's fine-tuning checkpoint as finetune_FairCLIP.py lines 274-279 write it, with the mixed dtypes of
    openai/CLIP's convert_weights (Conv/Linear weights, MHA in_proj and the projections in fp16; the rest fp32)."""
    state = {}
    for key, value in model.state_dict().items():
        half = (key.endswith(("in_proj_weight", "in_proj_bias", "text_projection", "visual.proj"))
                or ".c_fc." in key or ".c_proj." in key or ".out_proj." in key or key.startswith("visual.conv1"))
        state[key] = value.half() if half else value.clone()
    torch.save({"epoch": 2, "model_state_dict": state, "optimizer_state_dict": {}, "loss": 0.5}, path)
    return path


@pytest.mark.slow
def test_zeroshot_of_a_fairclip_pth_equals_scoring_the_same_weights_loaded_directly(dataset, tmp_path):
    import open_clip

    from fairbench.datasets.fairvlmed.load import load_fairvlmed
    from fairbench.models.archs import TINY_CFG

    path = fairclip_style_pth(tiny_model(3), tmp_path / "clip_ep002.pth")
    out = tmp_path / "results"
    r = invoke("run", "--method", "zeroshot", "--data", dataset, "--out", out, "--pretrained", path, "--seeds", "3")
    assert r.exit_code == 0, r.output
    results = sorted(out.rglob("result.json"))
    assert len(results) == 1  # seed-independent: one run whatever --seeds says
    record = json.loads(results[0].read_text())
    assert record["mode"] == "zero-shot" and record["single_run"] and record["trainable_parameters"] == 0
    got = scores_of(results[0].parent)

    # reference: the same weights loaded straight into open_clip's CLIP, scored one image at a time
    direct = open_clip.CLIP(**TINY_CFG)
    direct.load_state_dict({k: v.float() for k, v in torch.load(path)["model_state_dict"].items()})
    direct.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=TINY_CFG["text_cfg"]["context_length"])
    data = load_fairvlmed(dataset, image_size=64, tokenize=tokenizer, tokenizer_key="ref", text_source="gpt4",
                          cache_dir=tmp_path / "cache")
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    with torch.no_grad():
        text = F.normalize(direct.encode_text(tokenizer(["A photo of non-glaucoma", "A photo of glaucoma"])), dim=-1)
        for sample, image in zip(data.test.sample_ids, data.test.images, strict=True):
            x = (image.float().expand(3, -1, -1) / 255 - mean) / std
            feature = F.normalize(direct.encode_image(x[None]), dim=-1)
            want = torch.softmax(feature @ text.t(), dim=-1)[0, 1].item()
            assert got[sample] == pytest.approx(want, abs=1e-5)


# ---------------------------------------------------------------- linear probe


class ReferenceLARS(torch.optim.Optimizer):
    """MoCo v3's LARS as FairCLIP uses it (mae/util/lars.py lines 14-47), written out as a per-parameter loop."""

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                dp = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where(pn > 0, torch.where(un > 0, 0.001 * pn / un, torch.ones_like(pn)),
                                    torch.ones_like(pn))
                    dp = dp.mul(q)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(0.9).add_(dp)
                p.add_(mu, alpha=-group["lr"])


def test_linear_probe_head_equals_fairclips_recipe_written_as_a_plain_loop():
    """Same init draw, order and schedule; autograd + per-parameter LARS + nn.Linear(D, 2) with BCE on logit 1
    (FairCLIP engine_finetune.py line 94) against the batched closed-form heads."""
    from fairbench_methods.linprobe import INIT_STD, LinearProbeSettings, fit_probe, lr_at

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=g) * 3 + 1, (torch.rand(40, generator=g) > 0.5).long()
    s = LinearProbeSettings(probe_epochs=7, probe_batch_size=16, warmup_epochs=2, eval_every=7,
                            weight_decays=(0.01,))
    auc = lambda labels, scores: 0.5  # noqa: E731 - one evaluation, the last epoch: selection is not under test
    probe = fit_probe(x, y, torch.ones(40), x[:8], y[:8].numpy(), s, seed=5, auc=auc)

    gen = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(6, 2)
    with torch.no_grad():
        head.weight.copy_(torch.nn.init.trunc_normal_(torch.empty(1, 2, 6), std=INIT_STD, generator=gen)[0])
        head.bias.zero_()
    xd = x.double()
    xs = ((xd - xd.mean(0)) / (xd.var(0, unbiased=False) + 1e-6).sqrt()).float()
    opt = ReferenceLARS(head.parameters(), lr=0.0, weight_decay=0.01)
    steps = 40 // 16
    for epoch in range(7):
        order = torch.randperm(40, generator=gen)
        for step in range(steps):
            opt.param_groups[0]["lr"] = lr_at(epoch + step / steps, s, 0.1 * 16 / 256)
            idx = order[step * 16:(step + 1) * 16]
            loss = F.binary_cross_entropy_with_logits(head(xs[idx])[:, 1], y[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.testing.assert_close(probe.weight, head.weight[1].detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(probe.bias, head.bias[1].detach(), rtol=1e-4, atol=1e-6)


def test_probe_selects_regularisation_on_validation_and_reweights_groups():
    from fairbench_methods.linprobe import LinearProbeSettings, fit_probe, sample_weights

    groups = torch.tensor([0, 0, 0, 1, -1, 1])
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    w = sample_weights(labels, groups, "group")
    # by hand: known samples 5, group 0 has 3, group 1 has 2 → 5/(2·3), 5/(2·2); unknown 1; then mean 1
    raw = torch.tensor([5 / 6, 5 / 6, 5 / 6, 5 / 4, 1.0, 5 / 4])
    torch.testing.assert_close(w, raw * 6 / raw.sum())
    cells = sample_weights(labels, groups, "group-label")
    assert cells[0] == cells[2] and cells[1] != cells[0]  # (0,0) twice, (0,1) once

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    seen = []

    def auc(labels, scores):  # records what selection saw: validation labels only
        seen.append(len(labels))
        from sklearn.metrics import roc_auc_score

        return roc_auc_score(labels, scores)

    s = LinearProbeSettings(probe_epochs=20, probe_batch_size=32, weight_decays=(0.0, 10.0), eval_every=5)
    probe = fit_probe(x, y, torch.ones(64), x[:16], y[:16].numpy(), s, seed=0, auc=auc)
    assert set(seen) == {16} and len(seen) == 2 * 4  # two heads × four evaluations, on the 16 validation samples
    best = max(r["val_auc"] for r in probe.history)
    assert probe.weight_decay in s.weight_decays
    assert math.isclose(max(r["val_auc_per_weight_decay"][str(probe.weight_decay)] for r in probe.history), best)


def test_probe_on_one_training_class_says_so():
    from fairbench_methods.linprobe import LinearProbe

    from fairbench.method import SettingsError

    with pytest.raises(SettingsError, match="one class only"):
        LinearProbe().check_training_labels(np.zeros(10, dtype=int))
    LinearProbe().check_training_labels(np.array([0, 1]))


def test_damaged_feature_cache_is_named_and_rebuilt(tmp_path):
    from fairbench.training.context import FitContext
    from fairbench.training.features import cached_features
    from fairbench.training.feeder import SplitData
    from fairbench.training.settings import TrainSettings

    model = tiny_model()
    images = torch.randint(0, 255, (5, 3, 64, 64), dtype=torch.uint8)
    split = SplitData(images=images, tokens=torch.zeros(5, 2, dtype=torch.long), labels=torch.zeros(5))
    logs = []
    ctx = FitContext(settings=TrainSettings(), train=split, val=split, test=split, normalize=lambda u: u.float() / 255,
                     tokenize=None, prompts=("a", "b"), device=torch.device("cpu"), auc=None, seed=0, data_key="d",
                     cache_dir=tmp_path, log=logs.append)
    first = cached_features(model, {"train": split}, ctx)["train"]
    with torch.no_grad():
        want = model.eval().encode_image(images.float() / 255)
    torch.testing.assert_close(first, want)
    (entry,) = (tmp_path / "features").glob("*.pt")
    blob = torch.load(entry)
    blob["features"][0, 0] += 1.0  # a damaged value under an intact header
    torch.save(blob, entry)
    again = cached_features(model, {"train": split}, ctx)["train"]
    assert len(logs) == 1 and "does not match its digest" in logs[0]
    torch.testing.assert_close(again, want)


# ---------------------------------------------------------------- LoRA


def test_lora_counts_adapters_keeps_base_weights_and_merges_to_the_adapter_model():
    pytest.importorskip("peft")
    from fairbench.models.adapters import apply_lora, merged_state_dict, trainable_names
    from fairbench.models.archs import TINY_CFG

    base = tiny_model(1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, base, rank=4, alpha=8.0)
    width, blocks = TINY_CFG["vision_cfg"]["width"], TINY_CFG["vision_cfg"]["layers"] + TINY_CFG["text_cfg"]["layers"]
    # one rank-4 update of each packed (3·width × width) in_proj: A is 4×width, B is 3·width×4
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == blocks * (4 * width + 3 * width * 4)
    assert all(".lora_" in n for n in trainable_names(model))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    images, tokens = torch.randn(4, 3, 64, 64), torch.randint(1, 400, (4, 48))
    for _ in range(2):
        loss = -(F.normalize(model.encode_image(images), dim=-1) * F.normalize(model.encode_text(tokens), dim=-1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)  # the backbone is bit-for-bit as loaded
    merged = tiny_model(99)
    merged.load_state_dict(merged_state_dict(model))  # strict: the plain model's own names
    with torch.no_grad():
        adapted, plain = model.encode_image(images), merged.encode_image(images)
        assert not torch.allclose(plain, tiny_model(1).encode_image(images), atol=1e-4)  # the adapters moved it
        torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged.encode_text(tokens), model.encode_text(tokens), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["clip", "fairclip"])
def test_lora_run_saves_adapters_and_its_merged_export_scores_like_the_run(dataset, tmp_path, method):
    pytest.importorskip("peft")
    start = tmp_path / "start.pt"
    torch.save(tiny_model(2).state_dict(), start)
    out = tmp_path / "results"
    r = invoke("run", "--method", method, "--attr", "race", "--seeds", "1", "--data", dataset, "--out", out,
               "--pretrained", start, *FAST, "--set", "adapter=lora", "--set", "adapter.rank=4",
               "--set", "checkpoint=true", "--set", "lr=1e-3")
    assert r.exit_code == 0, r.output
    (result,) = sorted(out.rglob("result.json"))
    record = json.loads(result.read_text())
    assert record["mode"] == "lora" and record["config"]["train"]["adapter_rank"] == 4
    assert record["trainable_parameters"] == 6 * (4 * 128 + 384 * 4)
    run = result.parent
    base = torch.load(start)
    trained = torch.load(run / "checkpoint.pt")
    for key, value in trained.items():
        if ".lora_" not in key:
            assert torch.equal(value, base[key.replace(".base_layer.", ".")]), key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in trained.items() if "lora_B" in k)
    merged = tmp_path / "merged.safetensors"
    e = invoke("export", run, "--out", merged)
    assert e.exit_code == 0, e.output
    z = invoke("run", "--method", "zeroshot", "--data", dataset, "--out", tmp_path / "zs", "--pretrained", merged)
    assert z.exit_code == 0, z.output
    (zs,) = sorted((tmp_path / "zs").rglob("result.json"))
    got, want = scores_of(zs.parent), scores_of(run)
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-5

    table = invoke("table", "--out", out, "--attr", "race")
    text = " ".join(table.output.split())
    assert table.exit_code == 0 and f"{method} · lora" in text and "trainable parameters:" in text
    bad = invoke("export", zs.parent, "--out", tmp_path / "x.safetensors")
    assert bad.exit_code == 2 and "only runs trained with --set adapter=lora have adapters" in bad.output


# ---------------------------------------------------------------- BiomedCLIP layout (local-dir:, HF text tower)


def test_fairclip_protocol_trains_both_towers_of_a_biomedclip_layout_model(tmp_path):
    pytest.importorskip("transformers")
    from fairbench.models.backbones import create_backbone
    from fairbench.registry import get_method
    from fairbench.training.settings import resolve_train_settings
    from fairbench.training.trainer import _unfrozen
    from tests.helpers import biomedclip_folder

    get_method("fairclip")  # registers the fairclip protocol
    folder = biomedclip_folder(tmp_path)
    arch = f"local-dir:{folder}"
    settings = resolve_train_settings(arch, "fairclip")
    model = create_backbone(arch).model
    assert type(model).__name__ == "CustomTextCLIP"
    trained = {id(p) for p in _unfrozen(model.parameters(), model, settings.frozen)}
    names = {n for n, p in model.named_parameters() if id(p) in trained}
    # the rule written out by name: the whole image tower (trunk and projection head) and BERT's encoder layers;
    # not the logit scale, BERT's embeddings module or the text projection
    want = {n for n, _ in model.named_parameters() if n.startswith(("visual.", "text.transformer.encoder."))}
    assert names == want
    assert any(n.startswith("visual.head.") for n in names) and any(".attention.self.query" in n for n in names)


def test_bad_backbones_fail_in_one_line_before_any_run_folder(dataset, tmp_path, monkeypatch):
    out = tmp_path / "results"
    empty = tmp_path / "empty-model"
    empty.mkdir()
    r = invoke("run", "--method", "zeroshot", "--arch", f"local-dir:{empty}", "--data", dataset, "--out", out)
    assert r.exit_code == 2 and "no open_clip_config.json" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()

    start = tmp_path / "tiny.pt"
    torch.save(tiny_model().state_dict(), start)
    r = invoke("run", "--method", "zeroshot", "--arch", "b16", "--data", dataset, "--out", out, "--pretrained", start)
    assert r.exit_code == 2, r.output
    assert "first mismatched keys positional_embedding (checkpoint [48, 128], arch [77, 512])" in r.output
    assert "looks like arch 'tiny'" in r.output
    assert not out.exists()

    pytest.importorskip("transformers")
    from tests.helpers import biomedclip_folder

    folder = biomedclip_folder(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers → ImportError
    r = invoke("run", "--method", "clip", "--arch", f"local-dir:{folder}", "--data", dataset, "--out", out)
    assert r.exit_code == 2 and "pip install 'fairbench-medvlm[hf]'" in r.output, r.output
    assert not out.exists()


def test_fairmoe_refuses_a_hugging_face_text_tower_naming_it(tmp_path):
    pytest.importorskip("transformers")
    from fairbench.method import SettingsError
    from fairbench.models.archs import get_arch
    from fairbench.registry import get_method
    from tests.helpers import biomedclip_folder

    arch = get_arch(f"local-dir:{biomedclip_folder(tmp_path)}")
    with pytest.raises(SettingsError, match=r"Hugging Face \(BERT-style\) text tower"):
        get_method("fairmoe").check_arch(arch)
    get_method("fairmoe").check_arch(get_arch("tiny"))


@pytest.mark.slow
def test_biomedclip_layout_trains_clip_and_fairclip_and_scores_zero_shot_offline(dataset, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from tests.helpers import biomedclip_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = biomedclip_folder(tmp_path)
    out = tmp_path / "results"
    r = invoke("run", "--method", "clip,fairclip,zeroshot", "--arch", f"local-dir:{folder}", "--attr", "race",
               "--seeds", "1", "--data", dataset, "--out", out, *FAST, "--set", "lr=1e-4")
    assert r.exit_code == 0, r.output
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("result.json"))]
    assert sorted(r["method"] for r in records) == ["clip", "fairclip", "zeroshot"]
    assert all(r["arch"] == f"local-dir:{folder.resolve()}" for r in records)
    assert all("local-dir-biomedclip-tiny-" in r["run_id"] for r in records)
    assert all(0.0 <= r["metrics"]["test"]["auc"] <= 1.0 for r in records)


@pytest.mark.slow
def test_zeroshot_linear_probe_and_clip_make_three_labelled_rows_with_zero_shot_single_run(dataset, tmp_path):
    out = tmp_path / "results"
    r = invoke("run", "--method", "zeroshot,linear-probe,clip", "--attr", "race", "--seeds", "2", "--data", dataset,
               "--out", out, "--pretrained", "none", *FAST, "--set", "probe_epochs=20")
    assert r.exit_code == 0, r.output
    records = [json.loads(p.read_text()) for p in sorted(out.rglob("result.json"))]
    assert sorted((r["method"], r["seed"]) for r in records) == [
        ("clip", 0), ("clip", 1), ("linear-probe", 0), ("linear-probe", 1), ("zeroshot", 0)]
    probe = next(r for r in records if r["method"] == "linear-probe")
    assert probe["mode"] == "linear-probe" and probe["fit"]["weight_decay"] in (0.0, 1e-4, 1e-3, 1e-2)
    assert probe["trainable_parameters"] == probe["fit"]["feature_dim"] + 1
    table = invoke("table", "--out", out, "--attr", "race")
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "clip · fine-tune" in text and "linear-probe " in text and "zeroshot (single run)" in text
    assert "missing 1" not in text  # one zero-shot run is not a missing seed
    assert "a seed-independent mode (zero-shot) scored once, so no std over seeds" in text


def test_modes_never_pool_and_a_single_run_pairs_with_every_seed_in_compare(tmp_path):
    from fairbench.report.aggregate import long_frame
    from fairbench.report.significance import compare_methods
    from fairbench.report.tables import build_tables
    from fairbench.runs.results import collect_results
    from tests.helpers import write_run

    full = {"method": "clip", "arch": "b16", "train": {"lr": 1e-5}}
    lora = {"method": "clip", "arch": "b16", "train": {"lr": 1e-5, "adapter": "lora", "adapter_rank": 8}}
    for seed in (0, 1):
        write_run(tmp_path, "clip", "b16", None, seed, config=full,
                  mode={"mode": "fine-tune", "single_run": False, "trainable_parameters": 86_000_000})
        write_run(tmp_path, "clip", "b16", None, seed, config=lora, strength=0.5,
                  mode={"mode": "lora", "single_run": False, "trainable_parameters": 294_912})
    write_run(tmp_path, "zeroshot", "b16", None, 0, strength=0.3,
              mode={"mode": "zero-shot", "single_run": True, "trainable_parameters": 0})
    records = collect_results(tmp_path).records
    (table,) = build_tables(long_frame(records), attrs=["race"])
    labels = {r.label for r in table.rows}
    assert labels == {"clip · fine-tune", "clip · lora", "zeroshot (single run)"}
    caption = " ".join(table.caption.split())
    assert "trainable parameters: " in caption and "clip · fine-tune 86M" in caption
    assert "clip · lora 295k" in caption and "zeroshot (single run) 0" in caption
    assert not any("missing" in note for note in table.notes)
    full_hash = next(r["config_hash"] for r in records if r["config"] == full)
    (comp,) = compare_methods(records, "zeroshot", "clip", "race", config_b=full_hash, n_resamples=20)
    assert comp.seeds == [0, 1] and any("single run" in n for n in comp.notes)


@pytest.mark.slow
def test_a_linear_probe_on_one_training_class_stops_before_its_run_folder(dataset, tmp_path):
    from tests.helpers import copy_dataset

    data = copy_dataset(dataset, tmp_path / "data")
    for path in sorted((data / "Training").glob("*.npz")):  # every training sample negative
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["glaucoma"] = np.array(0, dtype=arrays["glaucoma"].dtype)
        np.savez(path, **arrays)
    out = tmp_path / "results"
    r = invoke("run", "--method", "linear-probe", "--attr", "race", "--seeds", "1", "--data", data, "--out", out,
               "--pretrained", "none")
    assert "the training split has one class only (label [0])" in r.output, r.output
    assert not list(out.rglob("linear-probe"))  # no run folder was made
