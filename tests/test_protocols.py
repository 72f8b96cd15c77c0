"""`--protocol`: FairCLIP's released fine-tuning (`fairclip`) against fairbench's default, as the trainer applies
them and as results and tables record them."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.models.archs import CLIP_FROZEN
from fairbench.training.trainer import fp32_optimizer_step
from tests.helpers import toy_train

runner = CliRunner()
FAST = ["--epochs", "2", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16", "--pretrained", "none"]


def test_fp32_step_on_fp16_weights_equals_an_fp32_adam_step_rounded_back_to_fp16():
    """FairCLIP's round trip: weights up to fp32, Adam in fp32, weights back to fp16, three steps running."""
    torch.manual_seed(0)
    start = torch.tensor([1.0, 0.5, 1e-3, -2e-3, 3.0, 1e-4], dtype=torch.float16)
    grads = [torch.randn(6) for _ in range(3)]
    weight = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([weight], lr=1e-5, betas=(0.1, 0.1), eps=1e-6, weight_decay=6e-5)
    reference = torch.nn.Parameter(start.float())  # by hand: Adam in fp32, weights rounded to fp16 each step
    ref_opt = torch.optim.Adam([reference], lr=1e-5, betas=(0.1, 0.1), eps=1e-6, weight_decay=6e-5)
    for grad in grads:
        weight.grad = grad.half()
        fp32_optimizer_step(optimizer)
        reference.grad = grad.half().float()
        ref_opt.step()
        reference.data = reference.data.half().float()
        assert weight.dtype == torch.float16 and weight.grad.dtype == torch.float16
        assert torch.equal(weight.detach().float(), reference.detach())
    state = optimizer.state[weight]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    # an lr-1e-5 update is below half an fp16 spacing at |w| ≥ 0.5 (spacing ≥ 4.9e-4): lost; at 1e-3 it lands
    moved = weight.detach() != start
    assert moved.tolist() == [False, False, True, True, False, True]


@pytest.mark.parametrize("ties, chosen", [("later", 2), ("earlier", 1)])
def test_ties_pick_the_later_or_the_earlier_epoch(ties, chosen):
    keys = [0.7, 0.9, 0.9, 0.8]  # epochs 1 and 2 tie for best
    assert toy_train("val", 4, keys, ties=ties).best_epoch == chosen
    assert toy_train("test", 4, keys, ties=ties).best_epoch == chosen


def test_an_unknown_protocol_is_a_one_line_error_naming_the_valid_ones(dataset, tmp_path):
    out = tmp_path / "results"
    r = runner.invoke(app, ["run", "--method", "clip", "--protocol", "fairclp", "--data", str(dataset), "--out",
                            str(out), *FAST])
    assert r.exit_code == 2, r.output
    line = next(x for x in r.output.splitlines() if "unknown protocol" in x)
    assert "'fairclp'" in line and "Did you mean 'fairclip'" in line and "fairbench, fairclip" in line
    assert not out.exists() or not list(out.rglob("result.json"))


@pytest.mark.slow
def test_each_protocol_trains_as_it_says_records_itself_and_gets_its_own_table(dataset, tmp_path):
    out = tmp_path / "results"
    for protocol in ("fairclip", "fairbench"):
        r = runner.invoke(app, ["run", "--method", "clip", "--seeds", "1", "--protocol", protocol, "--data",
                                str(dataset), "--out", str(out), *FAST])
        assert r.exit_code == 0, r.output
    results = {json.loads(p.read_text())["config"]["protocol"]: (p, json.loads(p.read_text()))
               for p in out.rglob("result.json")}
    assert sorted(results) == ["fairbench", "fairclip"]
    (path_fc, fc), (path_fb, fb) = results["fairclip"], results["fairbench"]
    assert path_fc.parent.parent != path_fb.parent.parent and fc["config_hash"] != fb["config_hash"]
    train_fc, train_fb = fc["config"]["train"], fb["config"]["train"]
    assert (train_fc["select"], train_fc["ties"], train_fc["precision"], train_fc["fp32_numerics"]) == \
        ("test", "later", "fp16-weights", False)
    assert (train_fb["select"], train_fb["ties"], train_fb["precision"], train_fb["fp32_numerics"]) == \
        ("val", "earlier", "auto", True)
    assert tuple(train_fc["frozen"]) == tuple(train_fb["frozen"]) == CLIP_FROZEN
    assert fc["selection"]["rule"] == "test" and fb["selection"]["rule"] == "val"

    table = runner.invoke(app, ["table", "--out", str(out), "--format", "markdown"])
    assert table.exit_code == 0, table.output
    titles = [x for x in table.output.splitlines() if "protocol:" in x]
    assert any("protocol: fairclip" in t for t in titles) and any("protocol: fairbench" in t for t in titles)
    assert not any("protocol: fairclip" in t and "protocol: fairbench" in t for t in titles)
