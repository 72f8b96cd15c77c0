"""FairCLIP and Fair-MoE encode all group batches in one forward and split it (on accelerators; one group at a
time on a CPU, where that is faster): on both paths every loss term and gradient must equal the per-group
reference (written out below, with the unbounded, host-reading Sinkhorn), and a training step's loss must read
nothing back from the device."""

from __future__ import annotations

import logging

import pytest
import torch

from fairbench.method import Batch, encode_batch
from fairbench.registry import get_method
from fairbench.training.losses import clip_contrastive_loss, sinkhorn_distance

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=["joined", "separate"])
def group_forward(request, monkeypatch) -> str:
    """Both group-forward paths on this CPU: the accelerator's joined one and the CPU's one group at a time."""
    import fairbench_methods.fairclip as fairclip

    joined = request.param == "joined"
    monkeypatch.setattr(fairclip, "joins_group_forward", lambda device: joined)
    return request.param

NOTES = ["glaucoma with a large cup and thin rim", "non-glaucoma", "healthy optic nerve, no glaucoma", "glaucoma",
         "suspected glaucoma: follow up in six months with visual field testing"]  # ragged: padding differs


@pytest.fixture(scope="module")
def backbone():
    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone("tiny", pretrained=None)


def _batch(backbone, n: int, seed: int, group: int | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    groups = torch.full((n,), group) if group is not None else torch.tensor([0, 1, 2, -1, 0, 1, 2])[:n]
    return Batch(images=torch.randn(n, 3, 64, 64, generator=g),
                 tokens=backbone.tokenize([NOTES[(i + seed) % len(NOTES)] for i in range(n)]),
                 labels=torch.randint(0, 2, (n,), generator=g), groups=groups)


def _inputs(backbone, sizes=(3, 5, 2)):
    # A dict order that is not sorted, so a wrong split or order shows; unequal sizes take the per-pair Sinkhorn,
    # equal ones the batched one.
    codes = (2, 0, 1)
    return _batch(backbone, 7, 1), {g: _batch(backbone, n, 2 + i, g)
                                    for i, (g, n) in enumerate(zip(codes, sizes, strict=True))}


def _reference_distance(method, model, batch, features, group_features):
    """FairCLIP's distance as before: groups encoded one by one, geomloss's schedule read from the data."""
    from fairbench_methods.fairclip import pair_similarities

    s = method.settings
    batch_sims = pair_similarities(model, *features, s.form, group_side=False)
    total = batch_sims.new_zeros(())
    for g_image, g_text in group_features.values():
        group_sims = pair_similarities(model, g_image, g_text, s.form, group_side=True)
        total = total + sinkhorn_distance(batch_sims[:, None], group_sims[:, None], blur=s.blur)
    return s.fair_lambda * total


def _encode_each(model, group_batches, form):
    with torch.set_grad_enabled(torch.is_grad_enabled() and form != "published"):
        return {g: encode_batch(model, gb) for g, gb in group_batches.items()}


def _reference_fairclip(method, model, batch, group_batches):
    features = encode_batch(model, batch)
    return {"contrastive": clip_contrastive_loss(*features, model.logit_scale.exp()),
            "sinkhorn": _reference_distance(method, model, batch, features,
                                            _encode_each(model, group_batches, method.settings.form))}


def _reference_fairmoe(method, model, batch, group_batches):
    from fairbench_methods.fairmoe.layers import record_routing
    from fairbench_methods.fairmoe.loss import fol_terms
    from fairbench_methods.fairmoe.methods import _codes

    s = method.settings
    with record_routing(model) as records:  # one record per batch: main, then each group
        features = encode_batch(model, batch)
        group_features = _encode_each(model, group_batches, s.form)
    terms = {"contrastive": clip_contrastive_loss(*features, model.logit_scale.exp()),
             "sinkhorn": _reference_distance(method, model, batch, features, group_features)}
    codes = [_codes(batch, -1)] + [_codes(gb, g) for g, gb in group_batches.items()]
    fol = s.fol.resolved(s.moe.form)
    terms.update(fol_terms(records, codes, method.n_groups, fol.weights(), form=fol.form,
                           released_lambda=fol.released_lambda, unbiased=fol.unbiased, group_sample=fol.group_sample))
    return terms


def _terms_and_grads(fn, method, model, batch, group_batches):
    model.zero_grad(set_to_none=True)
    terms = fn(method, model, batch, group_batches)
    sum(terms.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


CASES = [("fairclip", {"form": "published"}), ("fairclip", {"form": "aligned", "fair_lambda": "0.1"}),
         ("fairmoe", {"form": "published"}), ("fairmoe", {"form": "aligned", "fair_lambda": "0.1"}),
         ("fairmoe", {"moe.form": "release", "fol.form": "released", "moe.feature_experts": "0"}),
         ("fairmoe", {"moe.form": "v0.1", "form": "aligned"})]


@pytest.mark.parametrize("sizes", [(3, 5, 2), (4, 4, 4)])
@pytest.mark.parametrize("name,overrides", CASES)
def test_one_group_forward_equals_encoding_each_group(backbone, name, overrides, sizes, group_forward):
    import copy

    cls = get_method(name)
    method = cls(cls.settings_from(overrides), attribute="race", n_groups=3)
    model = method.build(copy.deepcopy(backbone.model)).train()
    batch, group_batches = _inputs(backbone, sizes)
    reference = _reference_fairmoe if name == "fairmoe" else _reference_fairclip
    want, want_grads = _terms_and_grads(reference, method, model, batch, group_batches)
    got, got_grads = _terms_and_grads(lambda m, *a: m.loss_terms(*a), method, model, batch, group_batches)
    assert set(got) == set(want)
    if name == "fairmoe":
        assert {"fol_ei", "fol_et", "fol_fi", "fol_ft"} & set(got)
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-6, abs=1e-9), key
        assert want[key].item() != 0.0 or key.startswith("fol"), key
    assert set(got_grads) == set(want_grads)
    for key in want_grads:
        torch.testing.assert_close(got_grads[key], want_grads[key], rtol=1e-4, atol=1e-6, msg=key)


def test_encode_groups_splits_back_in_dict_order(backbone):
    from fairbench_methods.fairclip import encode_groups

    _, group_batches = _inputs(backbone)
    with torch.no_grad():
        want = _encode_each(backbone.model, group_batches, "aligned")
        for join in (True, False, None):
            got = encode_groups(backbone.model, group_batches, "aligned", join=join)
            assert list(got) == list(group_batches)
            for g in want:
                for a, b in zip(got[g], want[g], strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert encode_groups(backbone.model, {}, "published") == {}


def test_group_batches_join_on_accelerators_only(backbone, monkeypatch):
    from fairbench_methods.fairclip import encode_groups, joins_group_forward

    assert not joins_group_forward(torch.device("cpu"))
    assert joins_group_forward(torch.device("cuda")) and joins_group_forward(torch.device("mps"))
    _, group_batches = _inputs(backbone)
    calls = []
    monkeypatch.setattr("fairbench_methods.fairclip.encode_batch",
                        lambda model, b: calls.append(len(b.labels)) or (torch.zeros(len(b.labels), 2),) * 2)
    encode_groups(backbone.model, group_batches, "published")  # CPU tensors: one forward per group
    assert calls == [3, 5, 2]
    calls.clear()
    encode_groups(backbone.model, group_batches, "published", join=True)
    assert calls == [10]


@pytest.mark.parametrize("sizes", [(3, 5, 2), (4, 4, 4)])
@pytest.mark.parametrize("name", ["fairclip", "fairmoe"])
def test_a_training_step_reads_nothing_back(backbone, name, monkeypatch, sizes, group_forward):
    import copy

    cls = get_method(name)
    method = cls(cls.Settings(), attribute="race", n_groups=3)
    model = method.build(copy.deepcopy(backbone.model)).train()
    batch, group_batches = _inputs(backbone, sizes)

    def host_read(*args, **kwargs):
        raise AssertionError("host read in a training step")

    with monkeypatch.context() as patch:
        for attr in ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"):
            patch.setattr(torch.Tensor, attr, host_read)
        terms = method.loss_terms(model, batch, group_batches)
        sum(terms.values()).backward()
    assert all(torch.isfinite(t) for t in terms.values())
    assert "sinkhorn/over_bound" not in method.step_stats(model)


@pytest.mark.parametrize("sizes", [(3, 5, 2), (4, 4, 4)])
def test_values_beyond_the_bound_are_counted_and_reported_once(backbone, caplog, sizes):
    import copy
    import math

    cls = get_method("fairclip")
    method = cls(cls.Settings(), attribute="race", n_groups=3)
    model = copy.deepcopy(backbone.model)
    batch, group_batches = _inputs(backbone, sizes)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1e4))  # 100× CLIP's cap: the published similarities outgrow the bound
    for _ in range(2):
        method.loss_terms(model, batch, group_batches)
    with caplog.at_level(logging.WARNING, logger="fairbench"):
        assert method.step_stats(model) == {"sinkhorn/over_bound": 2.0 * len(group_batches)}
    assert "beyond the bound" in caplog.text
    assert method.step_stats(model) == {}  # counted since the last report only
