"""Fair-MoE's registered names: the study's names, each variant's resolved settings, `--set` on nested settings,
and the released forms. Each variant trains once in the whole suite, in test_cli_run's study test, which checks
it against tests/helpers.py's EXPECTED_RUN."""

from __future__ import annotations

import os

import pytest
import torch

from fairbench.method import SettingsError, flat_settings, settings_dict
from fairbench.registry import get_method, list_methods, load_builtin_methods
from fairbench.runs.jobs import split_overrides
from tests.helpers import ALL_FOL, ALL_LAYERS, EXPECTED_RUN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
load_builtin_methods()


pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = sorted(n for n in EXPECTED_RUN if n.startswith("fairmoe"))

# fairmoe's resolved settings, leaf by leaf: FairCLIP's released λ/blur/group batch, the released code's M, k, C.
FAIRMOE_SETTINGS = {
    "fair_lambda": 1e-6, "blur": 1e-6, "group_batch_size": 32, "form": "published",
    "moe.form": "paper", "moe.experts": 10, "moe.top_k": 3, "moe.capacity": 0.8,
    # None: the form's value (tests/test_fairmoe_forms.py checks what each form sets).
    "moe.renormalize": None, "moe.keep_pooled": None, "moe.relu_experts": None, "moe.release_routing": None,
    "moe.gate_hidden_ratio": 0.25, "moe.feature_input": None, "moe.feature_residual": None,
    "moe.feature_experts": None, "moe.feature_top_k": None, "moe.feature_hidden_ratio": None,
    "moe.feature_init": None, "moe.freeze_image_feature": None,
    "moe.embedding_moe": True, "moe.feature_moe": True,
    "moe.towers": ("image", "text"),
    # None: FOL's form follows moe.form, and its form sets the rest (tests/test_fairmoe_loss.py)
    "fol.ei": None, "fol.et": None, "fol.fi": None, "fol.ft": None, "fol.form": None, "fol.released_lambda": 1.0,
    "fol.unbiased": None, "fol.group_sample": None,
}
NO_FOL = {"fol.ei": 0.0, "fol.et": 0.0, "fol.fi": 0.0, "fol.ft": 0.0}
# Each variant's only differences from fairmoe (the paper's Tables 2–6).
VARIANT_DIFFERENCES = {
    "fairmoe": {}, "fairclip-fom": NO_FOL, "fairmoe-no-fol": NO_FOL,
    "fairmoe-no-fei": {"fol.ei": 0.0}, "fairmoe-no-fet": {"fol.et": 0.0},
    "fairmoe-no-ffi": {"fol.fi": 0.0}, "fairmoe-no-fft": {"fol.ft": 0.0},
    "fairmoe-no-em": {"moe.embedding_moe": False}, "fairmoe-no-fm": {"moe.feature_moe": False},
    "fairmoe-no-text-moe": {"moe.towers": ("image",)}, "fairmoe-no-image-moe": {"moe.towers": ("text",)},
}


def test_wildcard_lists_the_whole_study():
    assert list_methods("fairmoe*") == STUDY
    assert get_method("fairclip-fom").name == "fairclip-fom"
    for name in EXPECTED_RUN:
        cls = get_method(name)
        assert cls.uses_attribute and cls.group_batches and cls.description


@pytest.mark.parametrize("name", sorted(VARIANT_DIFFERENCES))
def test_variant_resolves_to_fairmoe_plus_its_ablation(name):
    assert flat_settings(get_method(name).Settings()) == {**FAIRMOE_SETTINGS, **VARIANT_DIFFERENCES[name]}


def test_nested_settings_from_set():
    cls = get_method("fairmoe")
    s = cls.settings_from({"moe.experts": "4", "moe.top_k": "2", "moe.capacity": "1.5", "fol.form": "released",
                           "moe.towers": "text", "fair_lambda": "1e-5"})
    assert (s.moe.experts, s.moe.top_k, s.moe.capacity, s.moe.towers) == (4, 2, 1.5, ("text",))
    assert (s.fol.form, s.fair_lambda) == ("released", 1e-5)
    assert settings_dict(s)["moe"]["towers"] == ["text"] and settings_dict(s)["fol"]["ei"] is None
    assert s.fol.resolved(s.moe.form).weights() == {"fol_ei": 0.0, "fol_et": 1e-4, "fol_fi": 0.0, "fol_ft": 1e-4}
    # A leaf override keeps the variant's own defaults in the rest of the group.
    no_text = get_method("fairmoe-no-text-moe").settings_from({"moe.capacity": "0.5"})
    assert (no_text.moe.capacity, no_text.moe.towers) == (0.5, ("image",))
    assert get_method("fairmoe-no-fei").settings_from({"fol.ei": "0.5"}).fol.ei == 0.5
    assert cls.Settings().moe is not cls.Settings().moe  # no two runs share one group instance


@pytest.mark.parametrize("overrides,message", [
    ({"moe.top_k": "11"}, r"moe\.top_k"),
    ({"moe.capacity": "0"}, r"moe\.capacity must be > 0"),
    ({"moe.towers": "image,imag"}, r"moe\.towers must be distinct names out of image, text"),
    ({"fol.form": "mine"}, r"fol\.form must be one of paper, released"),
    ({"moe.expert": "3"}, r"no setting 'moe\.expert'; settable: moe\.capacity"),
    ({"capacity": "0.5"}, r"no setting 'capacity' \(did you mean 'moe\.capacity'\?\)"),
    ({"fol_ei": "0"}, r"no setting 'fol_ei' \(did you mean 'fol\.ei'\?\)"),
    ({"moe": "3"}, r"setting 'moe' is a group; set its fields one by one, e.g\. moe\.form="),
    ({"moe.capacity": "lots"}, r"setting 'moe\.capacity' expects a float, got 'lots'"),
])
def test_bad_nested_settings_fail_with_one_line(overrides, message):
    with pytest.raises(SettingsError, match=message):
        get_method("fairmoe").settings_from(overrides)


def test_dotted_set_keys_route_to_the_methods_that_have_them():
    per_method, train = split_overrides(["fairmoe", "fairclip"], {"moe.capacity": "0.5", "fair_lambda": "1",
                                                                   "method.fol.ei": "0", "lr": "1e-4"})
    assert per_method == {"fairmoe": {"moe.capacity": "0.5", "fair_lambda": "1", "fol.ei": "0"},
                          "fairclip": {"fair_lambda": "1"}}
    assert train == {"lr": "1e-4"}
    with pytest.raises(SettingsError, match=r"--set capacity: .*\(did you mean 'moe\.capacity'\?\)"):
        split_overrides(["fairmoe"], {"capacity": "0.5"})


def test_released_forms_build_run_and_reach_every_gate():
    from fairbench.method import Batch
    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("tiny", pretrained=None)
    notes = ["glaucoma with a large cup", "non-glaucoma, healthy optic nerve", "glaucoma", "non-glaucoma exam"]
    g = torch.Generator().manual_seed(1)

    def batch(n: int, group: int | None = None) -> Batch:
        groups = torch.full((n,), group) if group is not None else torch.tensor([0, 1, 2, -1, 0, 1][:n])
        return Batch(images=torch.randn(n, 3, 64, 64, generator=g), tokens=backbone.tokenize([notes[i % 4]
                     for i in range(n)]), labels=torch.randint(0, 2, (n,), generator=g), groups=groups)

    cls = get_method("fairmoe")
    method = cls(cls.settings_from({"moe.feature_experts": "0", "moe.feature_top_k": "0", "fol.form": "released",
                                    "fol.ei": "1e-4", "fol.fi": "1e-4", "form": "aligned"}),
                 attribute="race", n_groups=3)
    model = method.build(backbone.model).train()
    assert model.image_head.n_experts == 3
    terms = method.loss_terms(model, batch(6), {p: batch(3, p) for p in range(3)})
    assert set(terms) == {"contrastive", "sinkhorn", *ALL_FOL}
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    for name, layer in model.moe_layers().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.gate.parameters()), name
    stats = method.step_stats(model)
    assert {k.split("/")[1] for k in stats} == ALL_LAYERS


def test_methods_command_lists_nested_settings_by_their_set_keys():
    from typer.testing import CliRunner

    from fairbench.cli import app

    r = CliRunner().invoke(app, ["methods", "fairmoe-no-text-moe", "--settings"], env={"COLUMNS": "1000"})
    assert r.exit_code == 0, r.output
    assert "moe.capacity = 0.8" in r.output and "moe.towers = image\n" in r.output and "fol.ei = None" in r.output
    assert "moe.form = paper" in r.output
