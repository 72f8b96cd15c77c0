"""Fair-MoE layers: routing masks on crafted weights, sparse = dense dispatch, gradients, pretrained init."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
from fairbench_methods.fairmoe.layers import (
    EmbeddingMoE,
    FeatureMoE,
    MoEConfig,
    StackedExperts,
    build_fair_moe,
    capacity_slots,
    record_routing,
    route_tokens,
    routing_stats,
    static_slots,
    text_layout,
    top_r_mask,
)
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_backbone():
    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    return create_backbone("tiny", pretrained=None)


def reference_top_c(probs: torch.Tensor, k: int, capacity: float, valid: torch.Tensor,
                    pooled: torch.Tensor | None) -> torch.Tensor:
    """Plain-loop Top_r then Top_c, written from the paper's definition (+ the documented pooled bypass)."""
    B, T, M = probs.shape
    kept = torch.zeros(B, T, M, dtype=torch.bool)
    for b in range(B):
        n = int(valid[b].sum())
        alpha = min(max(math.ceil(capacity * n * k / M - 1e-9), 1), n)
        top_r = {}
        for t in range(T):
            if valid[b, t]:
                order = sorted(range(M), key=lambda j: -float(probs[b, t, j]))
                top_r[t] = set(order[:k])
        for j in range(M):
            cands = [t for t in top_r if j in top_r[t] and (pooled is None or t != int(pooled[b]))]
            cands.sort(key=lambda t: -float(probs[b, t, j]))
            for t in cands[:alpha]:
                kept[b, t, j] = True
            if pooled is not None and j in top_r.get(int(pooled[b]), set()):
                kept[b, int(pooled[b]), j] = True
    return kept


def random_moe(dim: int = 16, hidden: int = 24, experts: int = 5, top_k: int = 2, capacity: float = 0.8,
               **kw) -> EmbeddingMoE:
    torch.manual_seed(1)
    stacked = StackedExperts(experts, dim, hidden, nn.GELU())
    with torch.no_grad():
        stacked.b1.normal_()
        stacked.b2.normal_()
    gate = nn.Sequential(nn.Linear(dim, 8), nn.GELU(), nn.Linear(8, experts))
    return EmbeddingMoE(stacked, gate, top_k, capacity, **kw)


# --- capacity and masks -------------------------------------------------------------------------------------

def test_capacity_rounds_up_and_clips():
    assert int(capacity_slots(65, 0.8, 3, 10)) == 16  # 15.6 → 16 (tiny image tower: 64 patches + CLS)
    assert int(capacity_slots(197, 0.8, 3, 10)) == 48  # 47.28 → 48 (ViT-B/16)
    assert int(capacity_slots(10, 1.0, 3, 10)) == 3  # exact products do not round up
    assert int(capacity_slots(5, 0.01, 3, 10)) == 1  # never zero
    assert int(capacity_slots(4, 10.0, 3, 3)) == 4  # never more than the tokens
    assert capacity_slots(torch.tensor([65, 10]), 0.8, 3, 10).tolist() == [16, 3]


def test_static_slots_equal_capacity_slots_without_a_tensor():
    for n in (0, 1, 4, 5, 10, 65, 77, 197, 257):
        for capacity in (0.01, 0.5, 0.8, 1.0, 1.25, 10.0):
            for top_k, experts in ((1, 4), (3, 10), (2, 3), (3, 3)):
                assert static_slots(n, capacity, top_k, experts) == int(capacity_slots(n, capacity, top_k, experts))


def test_top_r_keeps_k_largest_per_token():
    probs = torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.05, 0.05, 0.2, 0.7]])
    assert top_r_mask(probs, 2).tolist() == [[True, False, True, False], [False, False, True, True]]


CRAFTED = torch.tensor([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]])


def test_top_c_keeps_alpha_largest_per_expert_on_crafted_weights():
    # k = 1, M = 2, T = 4, C = 0.5 → α = 1: expert 0 keeps token 0 (0.9 > 0.8), expert 1 keeps token 2 (0.7 > 0.6).
    r = route_tokens(CRAFTED, top_k=1, capacity=0.5, renormalize=False)
    assert r.kept[0].nonzero().tolist() == [[0, 0], [2, 1]]
    assert torch.equal(r.weights, CRAFTED * r.kept)  # paper's Ŵ without renormalisation
    renorm = route_tokens(CRAFTED, top_k=1, capacity=0.5, renormalize=True)
    assert torch.equal(renorm.weights, r.kept.float())  # one Top_r weight per token → 1 after renormalising


def test_top_c_pooled_bypass_and_padding_mask():
    # Token 1 is the pooled token: it skips Top_c, and the others still compete for α = 1.
    r = route_tokens(CRAFTED, top_k=1, capacity=0.5, pooled=torch.tensor([1]))
    assert r.kept[0].nonzero().tolist() == [[0, 0], [1, 0], [2, 1]]
    # Token 0 is padding: it is never kept, and n = 3 gives α = ceil(0.75) = 1, so token 1 wins expert 0.
    valid = torch.tensor([[False, True, True, True]])
    r = route_tokens(CRAFTED, top_k=1, capacity=0.5, valid=valid)
    assert r.kept[0].nonzero().tolist() == [[1, 0], [2, 1]]
    assert r.weights[0, 0].abs().sum() == 0


@pytest.mark.parametrize("use_pooled", [False, True])
def test_routing_matches_loop_reference(use_pooled):
    g = torch.Generator().manual_seed(3)
    B, T, M, k, C = 4, 13, 6, 2, 0.7
    probs = torch.rand(B, T, M, generator=g).softmax(-1)
    lengths = torch.tensor([13, 9, 5, 1])
    valid = torch.arange(T)[None] < lengths[:, None]
    pooled = (lengths - 1) if use_pooled else None
    r = route_tokens(probs, k, C, valid=valid, pooled=pooled, renormalize=False)
    assert torch.equal(r.kept, reference_top_c(probs, k, C, valid, pooled))
    # Each kept entry sits in exactly one valid slot; invalid slots are padding.
    per_entry = torch.zeros(B, T, M).scatter_add_(1, r.slots, r.slot_ok.float())
    assert torch.equal(per_entry, r.kept.float())


# --- sparse dispatch ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("renormalize,keep_pooled", [(True, True), (False, False)])
def test_sparse_dispatch_equals_dense_reference(renormalize, keep_pooled):
    moe = random_moe(renormalize=renormalize, keep_pooled=keep_pooled, pooled_first=True)
    x = torch.randn(3, 11, 16, generator=torch.Generator().manual_seed(4))
    moe.token_valid = torch.arange(11)[None] < torch.tensor([11, 7, 3])[:, None]
    routing = moe.route(x)
    assert 0 < routing.kept.sum() < routing.kept.numel()  # the masks do drop entries here
    torch.testing.assert_close(moe(x), moe.forward_dense(x, routing), rtol=1e-5, atol=1e-5)


def test_gradients_reach_gate_and_only_the_experts_that_compute():
    moe = random_moe(experts=6, capacity=0.3)
    x = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(5), requires_grad=True)
    routing = moe.route(x)
    moe(x).pow(2).sum().backward()
    assert moe.gate[0].weight.grad.abs().sum() > 0 and moe.gate[2].weight.grad.abs().sum() > 0
    used = routing.kept.any(0).any(0)
    grad_per_expert = moe.experts.w1.grad.abs().sum((1, 2))
    assert used.any() and torch.equal(grad_per_expert > 0, used)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradients_match_dense_reference():
    moe = random_moe()
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(6))
    routing = moe.route(x)
    moe(x).square().sum().backward()
    sparse = [p.grad.clone() for p in moe.parameters()]
    moe.zero_grad()
    moe.forward_dense(x, moe.route(x)).square().sum().backward()
    for a, p in zip(sparse, moe.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)
    assert routing.kept.any()


# --- initialisation from the pretrained MLP -------------------------------------------------------------------

def test_experts_start_as_the_pretrained_mlp():
    mlp = tiny_backbone().model.visual.transformer.resblocks[-1].mlp
    moe = EmbeddingMoE.from_mlp(mlp, n_experts=4, top_k=2, capacity=0.5)
    x = torch.randn(2, 65, 128, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        per_expert = moe.experts(x.reshape(1, -1, 128).expand(4, -1, -1)).reshape(4, 2, 65, 128)
        expected = mlp(x)
        for m in range(4):  # tiny loop in a test over 4 experts
            torch.testing.assert_close(per_expert[m], expected, rtol=1e-5, atol=1e-5)
        # Uniform gate: each token's output is the MLP's scaled by its kept weight (1 if all Top_r experts keep it).
        moe.gate[2].weight.zero_()
        moe.gate[2].bias.zero_()
        routing = moe.route(x)
        torch.testing.assert_close(moe(x), expected * routing.weights.sum(-1, keepdim=True), rtol=1e-5, atol=1e-5)
        assert (routing.weights.sum(-1) == 0).any()  # C = 0.5 does drop tokens
        moe.capacity = 4 / 2  # α = n: nothing dropped, the block is reproduced exactly
        torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)


def test_untrained_fair_moe_reproduces_the_backbone_when_nothing_is_dropped():
    bb = tiny_backbone()
    original = copy.deepcopy(bb.model).eval()
    # Form v0.1's property: C = M/k makes α = n (nothing dropped); renormalised weights + identity-initialised
    # feature experts after the projection.
    model = build_fair_moe(bb.model, MoEConfig(form="v0.1", experts=5, top_k=2, capacity=2.5)).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    tokens = bb.tokenize(["glaucoma", "a much longer clinical note about the optic nerve cup", "non-glaucoma"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), original.encode_image(images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), original.encode_text(tokens), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens, normalize=True),
                                   original.encode_text(tokens, normalize=True), rtol=1e-4, atol=1e-5)
    assert model.logit_scale is original.logit_scale or torch.equal(model.logit_scale, original.logit_scale)
    assert model.visual is bb.model.visual  # other attributes fall through to the CLIP


def test_feature_moe_starts_as_identity_and_keeps_top_k():
    torch.manual_seed(9)
    head = FeatureMoE(12, n_experts=5, top_k=2, act=nn.GELU())
    f = torch.randn(7, 12)
    torch.testing.assert_close(head(f), f)
    w = head.gate_weights(f)
    assert ((w > 0).sum(-1) == 2).all() and torch.allclose(w.sum(-1), torch.ones(7))
    dense = FeatureMoE(12, n_experts=3, top_k=0, act=nn.GELU())
    assert (dense.gate_weights(f) > 0).all()


# --- the built model ----------------------------------------------------------------------------------------------

def test_build_places_layers_and_text_padding_is_masked():
    bb = tiny_backbone()
    model = build_fair_moe(bb.model, MoEConfig(form="v0.1"))
    assert set(model.moe_layers()) == {"image_embedding", "text_embedding", "image_feature", "text_feature"}
    tokens = bb.tokenize(["short note", "a somewhat longer note with more words in it"])
    eot = tokens.argmax(-1)
    with record_routing(model) as records:
        model.encode_text(tokens)
        model.encode_image(torch.randn(2, 3, 64, 64))
    (text_rec,) = records["text_embedding"]
    assert torch.equal(text_rec.valid, torch.arange(tokens.shape[1])[None] <= eot[:, None])
    assert text_rec.weights[~text_rec.valid].abs().sum() == 0
    # Form v0.1: the pooled tokens (EOT, CLS) are never dropped.
    assert (text_rec.weights[torch.arange(2), eot].sum(-1) > 0.99).all()
    (image_rec,) = records["image_embedding"]
    assert image_rec.weights.shape == (2, 65, 10) and (image_rec.weights[:, 0].sum(-1) > 0.99).all()
    assert records["image_feature"][0].weights.shape == (2, 10)
    assert model.text_moe().token_valid is None  # the per-call layout is cleared


def test_ablation_configs_and_released_feature_form():
    model = build_fair_moe(tiny_backbone().model, MoEConfig(embedding_moe=False, towers=("text",),
                                                            feature_experts=0, feature_top_k=0), n_groups=3)
    assert set(model.moe_layers()) == {"text_feature"}
    assert model.text_head.n_experts == 3 and model.text_head.top_k == 0
    with pytest.raises(ValueError, match="one expert per group"):
        build_fair_moe(tiny_backbone().model, MoEConfig(feature_experts=0), n_groups=0)
    with pytest.raises(ValueError, match="open_clip CLIP"):
        build_fair_moe(nn.Linear(2, 2), MoEConfig())


def test_stats_report_drops_and_loads():
    bb = tiny_backbone()
    model = build_fair_moe(bb.model, MoEConfig(capacity=0.3)).train()
    model.encode_image(torch.randn(4, 3, 64, 64))
    stats = routing_stats(model)
    assert 0 < stats["moe/image_embedding/dropped"] < 1
    loads = [stats[f"moe/image_embedding/load_{j}"] for j in range(10)]
    assert abs(sum(loads) - 1) < 1e-9
    assert routing_stats(model) == {}  # reset after reading


def test_bf16_autocast_forward():
    bb = tiny_backbone()
    model = build_fair_moe(bb.model, MoEConfig())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.encode_image(torch.randn(2, 3, 64, 64))
        txt = model.encode_text(bb.tokenize(["glaucoma"]))
    assert torch.isfinite(out.float()).all() and torch.isfinite(txt.float()).all()


def test_text_layout_follows_eot():
    tokens = torch.tensor([[49406, 5, 49407, 0, 0], [49406, 7, 8, 9, 49407]])
    valid, pooled = text_layout(tokens, "argmax")
    assert pooled.tolist() == [2, 4]
    assert valid.tolist() == [[True, True, True, False, False], [True] * 5]
