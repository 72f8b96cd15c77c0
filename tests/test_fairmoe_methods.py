"""Every Fair-MoE registered variant builds on `tiny`, returns finite named losses, and trains one step."""

from __future__ import annotations

import os

import pytest
import torch

from fairbench.method import Batch, SettingsError
from fairbench.registry import get_method, list_methods, load_builtin_methods

os.environ.setdefault("HF_HUB_OFFLINE", "1")
load_builtin_methods()


pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = ["fairmoe", "fairmoe-no-em", "fairmoe-no-fei", "fairmoe-no-fet", "fairmoe-no-ffi", "fairmoe-no-fft",
         "fairmoe-no-fm", "fairmoe-no-fol", "fairmoe-no-image-moe", "fairmoe-no-text-moe"]
ALL_FOL = {"fol_ei", "fol_et", "fol_fi", "fol_ft"}
EXPECTED_FOL = {
    "fairmoe": ALL_FOL, "fairclip-fom": set(), "fairmoe-no-fol": set(),
    "fairmoe-no-fei": ALL_FOL - {"fol_ei"}, "fairmoe-no-fet": ALL_FOL - {"fol_et"},
    "fairmoe-no-ffi": ALL_FOL - {"fol_fi"}, "fairmoe-no-fft": ALL_FOL - {"fol_ft"},
    "fairmoe-no-em": {"fol_fi", "fol_ft"}, "fairmoe-no-fm": {"fol_ei", "fol_et"},
    "fairmoe-no-text-moe": {"fol_ei", "fol_fi"}, "fairmoe-no-image-moe": {"fol_et", "fol_ft"},
}


@pytest.fixture(scope="module")
def tiny():
    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("tiny", pretrained=None)
    notes = ["glaucoma with a large cup", "non-glaucoma, healthy optic nerve", "glaucoma", "non-glaucoma exam"]
    g = torch.Generator().manual_seed(1)

    def batch(n: int, group: int | None = None) -> Batch:
        groups = torch.full((n,), group) if group is not None else torch.tensor([0, 1, 2, -1, 0, 1][:n])
        return Batch(images=torch.randn(n, 3, 64, 64, generator=g), tokens=backbone.tokenize([notes[i % 4]
                     for i in range(n)]), labels=torch.randint(0, 2, (n,), generator=g), groups=groups)

    main = batch(6)
    extra = {p: batch(3, p) for p in range(3)}
    return backbone.model.state_dict(), main, extra


def test_wildcard_lists_the_whole_study():
    assert list_methods("fairmoe*") == sorted(STUDY)
    assert get_method("fairclip-fom").name == "fairclip-fom"
    for name in STUDY + ["fairclip-fom"]:
        cls = get_method(name)
        assert cls.uses_attribute and cls.group_batches and cls.description


@pytest.mark.parametrize("name", STUDY + ["fairclip-fom"])
def test_variant_builds_and_trains_one_step(tiny, name):
    from fairbench.models.backbones import create_backbone

    state, main, extra = tiny
    clip = create_backbone("tiny", pretrained=None).model
    clip.load_state_dict(state)
    cls = get_method(name)
    method = cls(cls.Settings(), attribute="race", n_groups=3)
    torch.manual_seed(2)
    model = method.build(clip).train()
    terms = method.loss_terms(model, main, extra)
    assert {"contrastive", "sinkhorn"} <= set(terms) and set(terms) - {"contrastive", "sinkhorn"} == EXPECTED_FOL[name]
    assert all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    gates = [p for n, p in model.named_parameters() if ".gate." in n or n.startswith(("image_head.gate", "text_head"))]
    assert gates and any(p.grad is not None and p.grad.abs().sum() > 0 for p in gates)
    stats = method.step_stats(model)
    assert stats and all(k.startswith("moe/") for k in stats)


def test_settings_from_set_and_variant_defaults():
    cls = get_method("fairmoe")
    s = cls.settings_from({"experts": "4", "top_k": "2", "capacity": "1.5", "fol_form": "released"})
    assert (s.experts, s.top_k, s.capacity, s.fol_form) == (4, 2, 1.5, "released")
    assert (cls.Settings().experts, cls.Settings().top_k, cls.Settings().capacity) == (10, 3, 0.8)
    no_fei = get_method("fairmoe-no-fei").Settings()
    assert no_fei.fol_ei == 0 and no_fei.fol_et == 1 and no_fei.experts == 10
    assert get_method("fairmoe-no-fei").settings_from({"fol_ei": "0.5"}).fol_ei == 0.5
    with pytest.raises(SettingsError, match="top_k"):
        cls.settings_from({"top_k": "11"})
    with pytest.raises(SettingsError, match="fol_form"):
        cls.settings_from({"fol_form": "mine"})
    with pytest.raises(SettingsError, match="no setting 'expert'"):
        cls.settings_from({"expert": "3"})


def test_released_forms_build_and_run(tiny):
    from fairbench.models.backbones import create_backbone

    state, main, extra = tiny
    clip = create_backbone("tiny", pretrained=None).model
    clip.load_state_dict(state)
    cls = get_method("fairmoe")
    method = cls(cls.settings_from({"feature_experts": "0", "feature_top_k": "0", "fol_form": "released",
                                    "form": "aligned"}), attribute="race", n_groups=3)
    model = method.build(clip)
    assert model.image_head.n_experts == 3
    terms = method.loss_terms(model, main, extra)
    assert all(torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
