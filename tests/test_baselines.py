"""The simple baselines (resample, reweight, groupdro, adversarial) and the method-contract hooks they use, each rule
against the published update written out (group_DRO's numbers, a plain loop) and through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from fairbench.cli import app
from fairbench.method import ContrastiveFineTune
from fairbench.registry import get_method
from fairbench.runs.results import config_hash, run_config
from fairbench.training.sampling import (
    EmptyGroupError,
    draw_weights,
    epoch_order,
    group_balanced_weights,
    inverse_frequency,
)
from fairbench.training.settings import SettingsError, resolve_train_settings

FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=2", "--set", "batch_size=16"]


def _method(name: str, n_groups: int = 2, **settings):
    cls = get_method(name)
    method = cls(cls.settings_from({k: str(v) for k, v in settings.items()}), "race", n_groups)
    method.group_names = {0: "Asian", 1: "Black", 2: "White"}
    return method


def test_groupdro_update_matches_group_dro_worked_numbers():
    """Sagawa et al.'s online update as group_DRO's loss.py (lines 61-71) computes it: q = (½, ½), η = 0.01,
    group losses (1, 2) → q = (0.4975000208, 0.5024999792), loss 1.5024999792; then group 2 absent (loss 0)."""
    method = _method("groupdro")
    method.prepare(torch.tensor([0, 1] * 10), torch.zeros(20))
    q = torch.full((2,), 0.5)
    losses = torch.tensor([1.0, 1.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 1, 1])
    loss = method.robust_loss(q, losses, groups, update=True)
    assert q.tolist() == pytest.approx([0.4975000208, 0.5024999792], abs=1e-7)
    assert float(loss) == pytest.approx(1.5024999792, abs=1e-6)
    loss = method.robust_loss(q, torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), update=True)
    assert q.tolist() == pytest.approx([0.5, 0.5], abs=1e-6)  # exp(η·1)·0.4975 vs exp(0)·0.5025, renormalised
    frozen = q.clone()
    method.robust_loss(q, losses, groups, update=False)  # eval mode (the gradient probe): q untouched
    assert torch.equal(q, frozen)


def test_groupdro_generalisation_adjustment_uses_training_group_sizes():
    """C = 1, n = (900, 100): adjusted losses (1.0333, 2.1) → q = (0.49733, 0.50267)."""
    method = _method("groupdro", adjustment=1.0)
    method.prepare(torch.tensor([0] * 900 + [1] * 100), torch.zeros(1000))
    q = torch.full((2,), 0.5)
    method.robust_loss(q, torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), update=True)
    assert q.tolist() == pytest.approx([0.49733, 0.50267], abs=1e-5)


def test_reweight_loss_is_the_inverse_frequency_weighted_mean():
    method = _method("reweight", n_groups=3)
    groups = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    method.prepare(groups, torch.zeros(10))
    expected = [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)]
    assert method.weights.tolist() == pytest.approx(expected)
    assert inverse_frequency(torch.tensor([6, 3, 1])).tolist() == pytest.approx(expected)
    # Σ_g (1/G) mean_g ℓ over the training set, written out, equals the weighted mean over every row
    losses = torch.arange(10, dtype=torch.float64)
    per_group = [losses[groups == g].mean() for g in range(3)]
    weighted = (method.weights.double()[groups] * losses).mean()
    assert float(weighted) == pytest.approx(float(sum(per_group) / 3), abs=1e-6)


def test_group_balanced_draws_make_every_group_equally_likely():
    groups = torch.tensor([0] * 80 + [1] * 15 + [2] * 5 + [-1] * 3)
    weights = group_balanced_weights(groups, 3)
    share = [float(weights[groups == g].sum() / weights.sum()) for g in range(3)]
    assert share == pytest.approx([1 / 3] * 3, abs=1e-12)
    assert float(weights[groups == -1].sum()) == 0.0  # an unknown value is never drawn
    order = epoch_order(30000, torch.cat([weights, torch.zeros(29897)]), torch.Generator().manual_seed(0))
    drawn = torch.bincount(groups[order].clamp(min=0), minlength=3).double() / order.numel()
    assert drawn.tolist() == pytest.approx([1 / 3] * 3, abs=0.02)
    plain = epoch_order(10, None, torch.Generator().manual_seed(3))
    assert torch.equal(plain, torch.randperm(10, generator=torch.Generator().manual_seed(3)))  # as before


def test_empty_group_in_training_is_refused_before_training():
    groups = torch.tensor([0, 0, 2, 2])  # group 1 ("Black") has no training rows
    for name in ("groupdro", "reweight", "resample"):
        with pytest.raises(EmptyGroupError, match=r"group\(s\) 'Black' have no training rows"):
            _method(name, n_groups=3).prepare(groups, torch.zeros(4))
    with pytest.raises(EmptyGroupError, match="'Black'"):
        draw_weights("group-balanced", _method("adversarial", n_groups=3), groups, torch.zeros(4))


def test_a_plugin_method_draws_its_own_batches_through_the_contract():
    class Halves(ContrastiveFineTune):
        uses_attribute = True
        sampling = "first-half"

        def sample_weights(self, groups, labels):
            return (torch.arange(labels.numel()) < labels.numel() // 2).double()

    method = Halves(None, "race", 2)
    weights = draw_weights("method", method, torch.zeros(8, dtype=torch.long), torch.zeros(8))
    order = epoch_order(8, weights, torch.Generator().manual_seed(0))
    assert order.max() < 4
    assert draw_weights("uniform", method, None, torch.zeros(8)) is None
    with pytest.raises(ValueError, match="trains on none"):
        draw_weights("group-balanced", get_method("clip")(), None, torch.zeros(8))


def test_gradient_reversal_flips_and_scales_the_gradient():
    from fairbench_methods.baselines import reverse_gradient

    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(3, 2)
    (reverse_gradient(x, 0.3) @ w).sum().backward()
    expected = -(0.3 * torch.ones(5, 2) @ w.t())
    assert torch.allclose(x.grad, expected)


def test_sampling_setting_stays_out_of_the_config_hash_at_its_default():
    def cfg(**overrides):
        train = resolve_train_settings("tiny", overrides=overrides)
        return run_config(protocol="fairbench", method="clip", arch="tiny", pretrained=None, attribute=None,
                          text_source="note", method_settings={}, train=train)

    assert "sampling" not in cfg()["train"]
    assert cfg(sampling="group-balanced")["train"]["sampling"] == "group-balanced"
    assert config_hash(cfg()) != config_hash(cfg(sampling="group-balanced"))
    with pytest.raises(SettingsError, match="sampling must be one of method, uniform, group-balanced"):
        resolve_train_settings("tiny", overrides={"sampling": "balanced"})


def test_methods_name_cites_the_update_rule():
    for name, cite in (("groupdro", "Sagawa et al."), ("adversarial", "Ganin & Lempitsky"),
                       ("reweight", "w_g = N/(G n_g)"), ("resample", "MEDFAIR")):
        result = CliRunner().invoke(app, ["methods", name], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert cite in result.output and "reference:" in result.output
    assert "sampling: group-balanced" in CliRunner().invoke(app, ["methods", "resample"]).output


@pytest.mark.slow
def test_every_baseline_trains_and_the_table_names_its_sampling(dataset, tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["run", "--method", "resample,reweight,groupdro,adversarial", "--attr", "race",
                                 "--seeds", "1", "--data", str(dataset), "--out", str(out), *FAST])
    assert r.exit_code == 0, r.output
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in out.rglob("result.json")}
    assert set(records) == {"resample", "reweight", "groupdro", "adversarial"}
    assert records["resample"]["sampling"] == "group-balanced" and records["groupdro"]["sampling"] == "uniform"
    assert all(math.isfinite(r["metrics"]["test"]["attributes"]["race"]["worst_group_auc"]) for r in records.values())
    history = json.loads(next(p for p in out.rglob("history.json") if "adversarial" in p.parts).read_text())
    assert set(history[0]["train"]) >= {"contrastive", "adversary"}
    table = CliRunner().invoke(app, ["table", "--out", str(out), "--attr", "race"], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert "resample [sampling=group-balanced]" in table.output
    for column in ("Worst AUC", "ECE gap", "FNR gap"):
        assert column in table.output
