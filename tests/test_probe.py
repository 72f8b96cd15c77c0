"""The per-epoch gradient probe: each loss term's gradient norm on the parameters it reaches, against a hand-computed
reference; it changes no number of the training; a tiny Fair-MoE run records it in history.json, prints the
inert-term warning, and the HTML report shows the shares."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fairbench.method import Method, encode_batch
from fairbench.training.probe import (
    INERT_SHARE,
    format_shares,
    gradient_norms,
    gradient_shares,
    inert_warnings,
)
from fairbench.training.trainer import SplitData, TrainSettings, train
from tests.helpers import ToyCLIP, small_synthetic


def test_gradient_norms_per_term_and_set_equal_the_hand_computed_ones():
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    b = torch.nn.Parameter(torch.tensor([[0.5, 0.25]]))
    c = torch.nn.Parameter(torch.tensor(4.0))  # reached by no term
    terms = {"square": (a ** 2).sum() + 0.5 * (b ** 2).sum(), "linear": 3 * b.sum(), "constant": torch.tensor(2.0)}
    norms = gradient_norms(terms, {"all": [a, b, c], "b": [b]})
    # ∂square/∂a = 2a, ∂square/∂b = b, ∂linear/∂b = 3, a constant has no gradient
    assert norms["square"]["all"] == pytest.approx(math.sqrt(4 * (1 + 4 + 9) + 0.25 + 0.0625))
    assert norms["square"]["b"] == pytest.approx(math.sqrt(0.25 + 0.0625))
    assert norms["linear"] == pytest.approx({"all": math.sqrt(18), "b": math.sqrt(18)})
    assert norms["constant"] == {"all": 0.0, "b": 0.0}
    assert a.grad is None and b.grad is None  # nothing an optimiser would see
    shares = gradient_shares(norms)
    assert shares["linear"]["b"] == pytest.approx(math.sqrt(18) / (math.sqrt(18) + math.sqrt(0.3125)))
    assert sum(s["all"] for s in shares.values()) == pytest.approx(1.0)


def test_inert_terms_are_named_once_at_the_first_epoch_they_are_inert_and_lines_show_every_share():
    history = [{"epoch": 0, "grad_shares": {"contrastive": {"all": 0.9, "gates": 0.8},
                                            "fol_ei": {"all": 1e-9, "gates": 3e-7}}},
               {"epoch": 1, "grad_shares": {"contrastive": {"all": 0.9, "gates": 0.8},
                                            "fol_ei": {"all": 1e-9, "gates": 2e-7},
                                            "fol_et": {"all": 1e-6, "gates": 2e-4}}}]
    assert inert_warnings(history) == [
        "fol_ei reaches the gates with 3e-07 of the gradient at epoch 1: inert at these settings"]
    assert format_shares(history[0]) == "grad share contrastive 0.90 (gates 0.80), fol_ei 1e-09 (gates 3e-07)"
    assert format_shares({"epoch": 0}) == ""
    assert inert_warnings([{"epoch": 0, "grad_shares": {"contrastive": {"all": 1.0}}}]) == []  # a lone term
    assert INERT_SHARE == 1e-4


# -- the probe changes no number: a toy whose model draws dropout and whose loss draws Python and NumPy numbers

class Noisy(Method):
    name = "noisy"
    group_batches = True

    def group_batch_size(self):
        return 3

    def probe_parameters(self, model):
        return {"text": list(model.text.parameters())}

    def loss_terms(self, model, batch, group_batches):
        from fairbench.training.losses import clip_contrastive_loss

        image, text = encode_batch(model, batch)
        jitter = random.random() + float(np.random.rand())
        groups = sum(encode_batch(model, gb)[0].mean() for gb in group_batches.values())
        return {"contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp()) * (1 + 0.01 * jitter),
                "groups": 1e-7 * groups}


def _split(n: int, seed: int) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    return SplitData(images=torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g),
                     tokens=torch.randint(0, 16, (n, 5), generator=g), labels=torch.arange(n) % 2,
                     groups=torch.arange(n) % 2)


def _toy(probe: bool):
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    model = ToyCLIP()  # dropout: torch's generator
    settings = TrainSettings(epochs=2, batch_size=6, lr=1e-2, betas=(0.9, 0.99), checkpoint=True, grad_probe=probe,
                             max_steps_per_epoch=3)
    return train(Noisy(None, "g", 2), model, settings, train_data=_split(20, 1), val_data=_split(10, 2),
                 test_data=_split(12, 3), normalize=lambda x: x.float() / 255,
                 tokenize=lambda prompts: torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]), prompts=("a", "b"),
                 seed=3, device=torch.device("cpu"), auc=lambda labels, scores: float(scores[labels == 1].mean()))


def test_the_probe_changes_no_number_of_the_training():
    probed, plain = _toy(True), _toy(False)
    assert all(torch.equal(probed.state_dict[k], plain.state_dict[k]) for k in plain.state_dict)
    assert np.array_equal(probed.val_scores, plain.val_scores) and np.array_equal(probed.test_scores,
                                                                                  plain.test_scores)
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("seconds") and not k.startswith("grad_")}  # noqa: E731
                       for r in h]
    assert strip(probed.history) == strip(plain.history)
    assert all("grad_norms" not in r for r in plain.history)
    for record in probed.history:
        assert set(record["grad_norms"]) == {"contrastive", "groups"}
        assert set(record["grad_norms"]["contrastive"]) == {"all", "text"}
        assert record["grad_norms"]["contrastive"]["all"] > 0
    assert probed.warnings == ["groups reaches all trainable parameters with "
                               f"{probed.history[0]['grad_shares']['groups']['all']:.1g} of the gradient at epoch 1: "
                               "inert at these settings"]
    assert plain.warnings == []


# -- a tiny Fair-MoE run end to end

@pytest.fixture(scope="module")
def fairmoe_run(tmp_path_factory) -> tuple[Path, str]:
    from fairbench.cli import app

    root = tmp_path_factory.mktemp("probe")
    data, out = small_synthetic(root), root / "results"
    r = CliRunner().invoke(app, ["run", "--method", "fairmoe", "--attr", "race", "--seeds", "1", "--data", str(data),
                                 "--out", str(out), "--epochs", "1", "--pretrained", "none", "--set",
                                 "max_steps_per_epoch=1", "--set", "batch_size=16", "--set", "group_batch_size=8"],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    return out, r.output


def test_a_fairmoe_run_records_gradient_norms_per_term_and_warns_about_inert_terms(fairmoe_run):
    out, output = fairmoe_run
    (history_file,) = out.rglob("history.json")
    (record,) = json.loads(history_file.read_text())
    terms = {"contrastive", "sinkhorn", "fol_ei", "fol_et", "fol_fi", "fol_ft"}
    assert set(record["grad_norms"]) == set(record["grad_shares"]) == terms
    assert all(set(v) == {"all", "gates"} for v in record["grad_norms"].values())
    assert record["grad_norms"]["contrastive"]["all"] > 0 and record["grad_norms"]["fol_ei"]["gates"] > 0
    warnings = json.loads((history_file.parent / "result.json").read_text())["warnings"]
    inert = [w for w in warnings if w.endswith("inert at these settings")]
    assert inert and all(w.split()[0] in terms for w in inert)
    assert all(w in " ".join(output.split()) for w in inert)  # printed by the run too
    for w in inert:
        shares = record["grad_shares"][w.split()[0]]
        assert max(shares.values()) < INERT_SHARE
    assert "grad share contrastive" in output  # on the epoch line


def test_the_report_shows_each_terms_share_of_the_gradient(fairmoe_run):
    from fairbench.report.html import build_report
    from fairbench.report.load import load_results

    out, _ = fairmoe_run
    page, _ = build_report(load_results(out), plots=False, source=str(out))
    assert "Loss terms: share of the gradient" in page
    section = page[page.index("Loss terms: share of the gradient"):]
    for term in ("contrastive", "sinkhorn", "fol_ei", "fol_ft"):
        assert f"<td>{term}</td>" in section
    assert "(inert)" in section and "<td>gates</td>" in section
