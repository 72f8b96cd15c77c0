"""Fair-MoE's forms (`moe.form`): what each sets, that the paper form's capacity changes predictions while v0.1's
pooled bypass makes it inert, where the feature MoE sits, the release's token MoE, and how results show the form."""

from __future__ import annotations

import os

import pytest
import torch
from fairbench_methods.fairmoe.layers import (
    FORMS,
    EmbeddingMoE,
    MoEConfig,
    build_fair_moe,
    release_slots,
    route_tokens,
)
from torch import nn

from fairbench.method import SettingsError, flat_settings, settings_dict
from fairbench.registry import get_method, list_methods, load_builtin_methods
from fairbench.report.aggregate import variant_labels

os.environ.setdefault("HF_HUB_OFFLINE", "1")
load_builtin_methods()

pytestmark = pytest.mark.usefixtures("one_thread")

NOTES = ["glaucoma", "a much longer clinical note about the optic nerve cup", "non-glaucoma"]


def build(form: str, capacity: float, **kw):
    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("tiny", pretrained=None)
    torch.manual_seed(1)  # same MoE initialisation for every capacity
    model = build_fair_moe(backbone.model, MoEConfig(form=form, capacity=capacity, **kw), n_groups=3).eval()
    return model, backbone.tokenize(NOTES)


def encodings(form: str, capacity: float, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    model, tokens = build(form, capacity, **kw)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_default_form_is_paper_for_fairmoe_and_every_ablation():
    for name in list_methods("fairmoe*") + ["fairclip-fom"]:
        settings = get_method(name).Settings()
        assert settings.moe.form == "paper", name
        assert settings_dict(settings)["moe"]["form"] == "paper"  # what result.json's method_settings records
    paper = MoEConfig().resolved()
    assert (paper.renormalize, paper.keep_pooled, paper.feature_input, paper.feature_residual) == (
        False, False, "pooled", False)


def test_each_form_sets_its_switches_and_explicit_settings_override_them():
    assert set(FORMS) == {"paper", "release", "v0.1"}
    assert all(FORMS[f].keys() == FORMS["paper"].keys() for f in FORMS)
    for form, switches in FORMS.items():
        resolved = MoEConfig(form=form).resolved()
        assert {k: getattr(resolved, k) for k in switches} == switches
    v01 = FORMS["v0.1"]
    assert (v01["renormalize"], v01["keep_pooled"], v01["feature_input"], v01["feature_residual"]) == (
        True, True, "projected", True)
    # An ablation flips one switch; the form stays what the result records.
    s = get_method("fairmoe").settings_from({"moe.form": "release", "moe.renormalize": "true"})
    assert s.moe.form == "release" and s.moe.resolved().renormalize is True
    assert s.moe.resolved().keep_pooled is False and s.moe.resolved().release_routing is True


@pytest.mark.parametrize("overrides,message", [
    ({"moe.form": "papr"}, r"^moe\.form must be one of paper, release, v0\.1 \(got 'papr'\)$"),
    ({"moe.renormalize": "maybe"}, r"setting 'moe\.renormalize' expects a bool, got 'maybe'"),
    ({"moe.feature_input": "after"}, r"moe\.feature_input must be one of pooled, projected \(got 'after'\)"),
])
def test_bad_form_settings_fail_with_one_line_naming_the_valid_values(overrides, message):
    with pytest.raises(SettingsError, match=message) as err:
        get_method("fairmoe").settings_from(overrides)
    assert "\n" not in str(err.value)


def test_unknown_form_fails_when_building_from_code_too():
    with pytest.raises(SettingsError, match=r"moe\.form must be one of paper, release, v0\.1"):
        MoEConfig(form="published")


def test_paper_form_capacity_changes_predictions():
    low_image, low_text = encodings("paper", 0.05)
    high_image, high_text = encodings("paper", 10.0)
    assert not torch.allclose(low_image, high_image) and not torch.allclose(low_text, high_text)
    # The same capacity twice gives the same outputs: the difference comes from C alone.
    again_image, again_text = encodings("paper", 0.05)
    assert torch.equal(low_image, again_image) and torch.equal(low_text, again_text)


def test_v01_form_pooled_bypass_makes_capacity_inert():
    # Why v0.1 is not the default: with the MoE in the last block only the pooled token reaches the feature,
    # and the bypass never drops it, so predictions are bit-identical for any capacity.
    outs = [encodings("v0.1", c) for c in (0.05, 0.8, 10.0)]
    for image, text in outs[1:]:
        assert torch.equal(image, outs[0][0]) and torch.equal(text, outs[0][1])
    # Switching the bypass off (an ablation) brings the capacity back.
    off = encodings("v0.1", 0.05, keep_pooled=False)
    assert not torch.allclose(off[0], outs[0][0])


def test_paper_form_feature_moe_reads_the_pooled_token_before_the_projection():
    model, tokens = build("paper", 0.8)
    clip = model.clip
    width_image, width_text = clip.visual.proj.shape[0], clip.text_projection.shape[0]
    embed = clip.visual.proj.shape[1]
    assert width_image != embed  # tiny: 128-wide towers, 64-wide embedding, so the placement is visible
    assert model.image_head.experts.w1.shape[1] == width_image and model.text_head.experts.w1.shape[1] == width_text
    assert not model.image_head.residual
    seen = {}
    model.image_head.register_forward_hook(lambda m, args, out: seen.update(image_in=args[0], image_out=out))
    model.text_head.register_forward_hook(lambda m, args, out: seen.update(text_in=args[0], text_out=out))
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(tokens)
        # Independent reference: I₀² is the tower's pooled token after its final LayerNorm (open_clip with the
        # projection switched off), and the feature is the projection of the MoE output, with no residual.
        proj = clip.visual.proj
        clip.visual.proj = None
        pooled = clip.visual(images)
        clip.visual.proj = proj
    assert torch.equal(seen["image_in"], pooled)
    torch.testing.assert_close(image, seen["image_out"] @ clip.visual.proj)
    torch.testing.assert_close(text, seen["text_out"] @ clip.text_projection)
    assert image.shape == (2, embed) and text.shape == (3, clip.text_projection.shape[1])
    # The projections are back in place, the same parameters under the same names.
    names = dict(model.named_parameters())
    assert names["clip.visual.proj"] is clip.visual.proj and names["clip.text_projection"] is clip.text_projection


def test_projected_forms_put_the_feature_moe_after_the_projection():
    for form in ("release", "v0.1"):
        model, _ = build(form, 0.8)
        embed = model.clip.visual.proj.shape[1]
        assert model.image_head.experts.w1.shape[1] == embed and model.feature_input == "projected"
    release, _ = build("release", 0.8)
    assert release.image_head.n_experts == 3 and release.image_head.top_k == 0  # one per group, dense
    assert isinstance(release.image_head.experts.act, nn.ReLU) and not release.image_head.residual


def test_release_form_token_moe():
    model, tokens = build("release", 0.8)
    layer = model.clip.transformer.resblocks[-1].mlp
    assert isinstance(layer, EmbeddingMoE) and layer.release_routing
    assert isinstance(layer.experts.act, nn.ReLU) and isinstance(layer.gate[1], nn.ReLU)
    # α = floor(C·197·k/M): 47 for the released M = 10, k = 3, C = 0.8, whatever the sequence length (≤ T).
    assert release_slots(0.8, 3, 10, 77) == 47 and release_slots(0.8, 3, 10, 20) == 20
    g = torch.Generator().manual_seed(4)
    probs = torch.rand(2, 300, 10, generator=g).softmax(-1)  # ~90 Top_r candidates per expert and sample
    routing = route_tokens(probs, 3, 0.8, renormalize=False, release_alpha=True)
    assert (routing.kept.sum(1) == 47).all()
    # Output minus input, with the expert mixture equal to the dense reference.
    x = torch.randn(2, 9, layer.experts.w1.shape[1], generator=g)
    with torch.no_grad():
        routing = layer.route(x)
        torch.testing.assert_close(layer(x) + x, layer.forward_dense(x) + x, rtol=1e-5, atol=1e-5)
        mixture = torch.einsum("mnd,nm->nd", layer.experts(x.reshape(1, 18, -1).expand(10, 18, -1)),
                               routing.weights.reshape(18, 10)).reshape(x.shape)
        torch.testing.assert_close(layer(x), mixture - x, rtol=1e-5, atol=1e-5)
    # Padding competes: the text layer gets no token mask in the release form.
    from fairbench_methods.fairmoe.layers import record_routing

    with record_routing(model) as records, torch.no_grad():
        model.encode_text(tokens)
    assert records["text_embedding"][0].valid.all()


def test_form_is_recorded_and_labels_table_rows():
    def record(form: str, run: str) -> dict:
        settings = get_method("fairmoe").settings_from({"moe.form": form})
        return {"_dir": run, "dataset": {"tag": "d"}, "selection": {"rule": "val"}, "method": "fairmoe",
                "arch": "tiny", "attribute": "race", "config_hash": form,
                "config": {"method_settings": settings_dict(settings), "seed": 0}}

    recs = [record("paper", "a"), record("release", "b"), record("v0.1", "c")]
    assert variant_labels(recs) == {"a": "form=paper", "b": "form=release", "c": "form=v0.1"}
    assert flat_settings(get_method("fairmoe").Settings())["moe.form"] == "paper"


def test_release_form_feature_experts_start_as_nn_linear_layers_do():
    """FairMoE.py lines 14–21: each feature expert is two `nn.Linear` layers at PyTorch's default initialisation,
    weights and biases uniform in ±1/√fan_in."""
    model, _ = build("release", 0.8)
    experts = model.text_head.experts.requires_grad_(False)
    dim, hidden = experts.w1.shape[1], experts.w1.shape[2]
    reference = [torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)]  # what the release builds
    for (weight, bias), layer in zip(((experts.w1, experts.b1), (experts.w2, experts.b2)), reference, strict=True):
        bound = layer.in_features ** -0.5
        assert float(weight.abs().max()) <= bound and float(bias.abs().max()) <= bound
        assert float(bias.abs().max()) > 0.5 * bound  # biases are drawn too, not zero
        # the spread of a uniform ±bound: std bound/√3, as nn.Linear's own weights have (not √3 times it)
        assert float(weight.std()) == pytest.approx(float(layer.weight.std()), rel=0.1)
    paper, _ = build("paper", 0.8)
    assert float(paper.text_head.experts.b1.abs().max()) == 0.0  # the paper form keeps this harness's init


def test_release_form_never_trains_the_image_feature_moe_and_weights_fol_text_only():
    from fairbench.training.trainer import SplitData, TrainSettings, train

    torch.manual_seed(0)
    from fairbench.models.backbones import create_backbone

    backbone = create_backbone("tiny", pretrained=None)
    cls = get_method("fairmoe")
    method = cls(cls.settings_from({"moe.form": "release", "group_batch_size": "4"}), attribute="race", n_groups=3)
    model = method.build(backbone.model)
    assert method.fol.weights() == {"fol_ei": 0.0, "fol_et": 1e-4, "fol_fi": 0.0, "fol_ft": 1e-4}
    assert (method.fol.form, method.fol.unbiased, method.fol.group_sample) == ("released", True, "drawn")
    image_head = {k: v.clone() for k, v in model.image_head.state_dict().items()}
    text_head = {k: v.clone() for k, v in model.text_head.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    n = 24
    data = SplitData(images=torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=g),
                     tokens=backbone.tokenize(NOTES * (n // 3)), labels=torch.arange(n) % 2,
                     groups=torch.arange(n) % 3)
    seen: list[set[str]] = []
    original = method.loss_terms

    def recording(*args):
        terms = original(*args)
        seen.append(set(terms))
        return terms

    method.loss_terms = recording
    settings = TrainSettings(epochs=1, batch_size=8, lr=1e-3, max_steps_per_epoch=2)
    train(method, model, settings, train_data=data, val_data=data, test_data=data, normalize=lambda x: x.float() / 255,
          tokenize=backbone.tokenize, prompts=("non-glaucoma", "glaucoma"), seed=0, device=torch.device("cpu"),
          auc=lambda labels, scores: 0.5)
    assert seen and all(s == {"contrastive", "sinkhorn", "fol_et", "fol_ft"} for s in seen)
    assert all(torch.equal(v, model.image_head.state_dict()[k]) for k, v in image_head.items())
    assert not all(torch.equal(v, model.text_head.state_dict()[k]) for k, v in text_head.items())
    assert not {id(p) for p in model.image_head.parameters()} & {id(p) for p in method.trainable_parameters(model)}
