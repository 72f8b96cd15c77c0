"""`--protocol fairclip` against FairCLIP's released fine-tuning, transcribed here as an independent reference.

The reference below is written from the released code's behaviour (FairCLIP/finetune_FairCLIP.py at HEAD caedce4,
src/modules.py), in this file's own words, and never calls fairbench's training code:

* group batches: one `DataLoader(group, batch_size=32, shuffle=True, drop_last=False)` per group (lines 117–124),
  re-iterated endlessly (src/modules.py `endless_loader`, lines 256–259): each pass over a group is a new
  permutation, yielded 32 at a time, the last batch short;
* the loss (lines 183–204): CLIP's symmetric cross-entropy on the logit-scaled cosine logits, plus λ × the Sinkhorn
  divergence (geomloss, p = 2, the script's blur) between diag(L·L) of the batch and each group's diag(L·L) divided
  by its sum, the group side without gradients;
* the optimiser (lines 148–151): Adam in two parameter groups, the text tower and the image tower, betas (0.1, 0.1),
  eps 1e-6, weight decay 6e-5;
* on a GPU (lines 135–144, 207–212): a plain fp16 model (OpenAI's `convert_weights`: Linear/Conv weights and biases,
  attention projections and the two output projections; LayerNorm computing in fp32), no autocast, every weight
  taken to fp32 for the optimiser step and rounded back to fp16 afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import geomloss
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fairbench.models.archs import TINY_CFG, get_arch
from fairbench.models.backbones import create_backbone
from fairbench.protocols import get_protocol
from fairbench.registry import get_method
from fairbench.training.losses import sinkhorn_distance
from fairbench.training.precision import native_numerics, release_fp16
from fairbench.training.step import TrainStep
from fairbench.training.trainer import (
    EpochPlan,
    GroupSampler,
    SplitData,
    TrainSettings,
    fp32_optimizer_step,
    precision_plan,
    train,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
POOLS = (70, 40, 20)  # group sizes: 70 = 32 + 32 + 6, 40 = 32 + 8, 20 < one batch


# -- the transcription -------------------------------------------------------------------------------------------

def released_group_loader(pool: torch.Tensor, batch_size: int, permutation: Callable[[int], torch.Tensor]
                          ) -> Iterator[torch.Tensor]:
    """One group's endless loader: a fresh permutation of the pool per pass, handed out `batch_size` at a time, the
    remainder as a last, short batch; then the next pass. `permutation(n)` is the loader's shuffle."""
    while True:
        order = pool[permutation(pool.numel())]
        for start in range(0, order.numel(), batch_size):
            yield order[start:start + batch_size]


def released_loss(model, images, tokens, group_batches, lam: float, blur: float) -> torch.Tensor:
    """The released step's loss for one batch (see the module docstring), in the tensors' own precision."""
    def logits(img, txt):
        img = model.encode_image(img)
        txt = model.encode_text(txt)
        img = img / img.norm(dim=1, keepdim=True)
        txt = txt / txt.norm(dim=1, keepdim=True)
        per_image = model.logit_scale.exp() * img @ txt.t()
        return per_image, per_image.t()

    per_image, per_text = logits(images, tokens)
    truth = torch.arange(images.shape[0])
    loss = (F.cross_entropy(per_image, truth) + F.cross_entropy(per_text, truth)) / 2
    batch_side = (per_image @ per_text.T).diag().float()
    sinkhorn = geomloss.SamplesLoss(loss="sinkhorn", p=2, blur=blur)
    for g_images, g_tokens in group_batches:
        with torch.no_grad():
            g_image, g_text = logits(g_images, g_tokens)
        group_side = (g_image @ g_text.T).diag().float()
        group_side /= group_side.sum()
        loss = loss + lam * sinkhorn(batch_side[:, None], group_side[:, None])
    return loss


def released_optimizer(model, lr=1e-5, weight_decay=6e-5):
    return torch.optim.Adam([{"params": model.transformer.parameters(), "lr": lr},
                             {"params": model.visual.parameters(), "lr": lr}],
                            lr=lr, betas=(0.1, 0.1), eps=1e-6, weight_decay=weight_decay)


def released_half(model) -> None:
    """OpenAI's `clip.model.convert_weights`, in words: every Linear and Conv weight and bias, the attention
    in-projection weight and bias, and any `text_projection` / `proj` parameter become fp16."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            for p in (module.weight, module.bias):
                if p is not None:
                    p.data = p.data.half()
        if isinstance(module, torch.nn.MultiheadAttention):
            for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                p = getattr(module, name, None)
                if p is not None:
                    p.data = p.data.half()
        for name in ("text_projection", "proj"):
            p = getattr(module, name, None)
            if isinstance(p, torch.nn.Parameter):
                p.data = p.data.half()


# -- group batches as FairCLIP's loaders draw them -----------------------------------------------------------------

def _groups(*sizes: int) -> torch.Tensor:
    return torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])[torch.randperm(sum(sizes),
                                                                                      generator=torch.Generator()
                                                                                      .manual_seed(0))]


def test_a_pool_of_70_gives_32_32_6_each_pass_a_permutation_as_a_dataloader_does():
    groups = _groups(70, 40)
    sampler = GroupSampler(groups, 2, 32, torch.Generator().manual_seed(3), mode="loader")
    draws = [sampler.next() for _ in range(9)]
    assert [d[0].numel() for d in draws] == [32, 32, 6] * 3
    assert [d[1].numel() for d in draws] == [32, 8] * 4 + [32]
    pool = torch.nonzero(groups == 0).flatten()
    passes = [torch.cat([d[0] for d in draws[k:k + 3]]) for k in (0, 3, 6)]
    for p in passes:
        assert torch.equal(p.sort().values, pool)  # each pass: every member once
    assert not torch.equal(passes[0], passes[1])  # a new permutation per pass

    # torch's own DataLoader(shuffle=True, drop_last=False), re-iterated, has the same shape of draws
    loader = DataLoader(TensorDataset(pool), batch_size=32, shuffle=True, drop_last=False)
    sizes = [b.numel() for _ in range(3) for (b,) in loader]
    assert sizes == [d[0].numel() for d in draws]

    # and the transcribed loaders, shuffling from the same generator in the same order, give the same indices
    gen = torch.Generator().manual_seed(3)
    loaders = [released_group_loader(torch.nonzero(groups == g).flatten(), 32,
                                     lambda n: torch.randperm(n, generator=gen)) for g in (0, 1)]
    for d in draws:
        assert all(torch.equal(d[g], next(loaders[g])) for g in (0, 1))


def test_reshuffle_sampling_keeps_full_batches_and_a_sampler_resumes_mid_pass():
    groups = _groups(70, 40)
    full = GroupSampler(groups, 2, 32, torch.Generator().manual_seed(3))  # the default protocol's sampling
    assert {d[0].numel() for d in (full.next() for _ in range(7))} == {32}
    gen = torch.Generator().manual_seed(4)
    sampler = GroupSampler(groups, 2, 32, gen, mode="loader")
    for _ in range(2):
        sampler.next()
    state, gen_state = sampler.state_dict(), gen.get_state()
    expected = [sampler.next() for _ in range(4)]
    resumed = GroupSampler(groups, 2, 32, torch.Generator().set_state(gen_state), mode="loader")
    resumed.load_state_dict(state)
    assert all(torch.equal(a[g], b[g]) for a, b in zip(expected, (resumed.next() for _ in range(4)), strict=True)
               for g in a)
    with pytest.raises(ValueError, match="group sampling must be one of reshuffle, loader"):
        GroupSampler(groups, 2, 32, gen, mode="dataloader")


def test_the_epoch_plan_slices_short_group_batches_as_the_sampler_draws_them():
    from fairbench.training.feeder import Feeder

    groups = _groups(*POOLS)
    data = SplitData(images=torch.arange(130, dtype=torch.uint8)[:, None, None, None].expand(-1, 3, 1, 1),
                     tokens=torch.arange(130)[:, None], labels=torch.arange(130), groups=groups)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    per_step = GroupSampler(groups, 3, 32, gen_a, mode="loader")
    expected = [per_step.next() for _ in range(5)]
    plan = EpochPlan(torch.arange(130), 5, 32, GroupSampler(groups, 3, 32, gen_b, mode="loader"),
                     Feeder(data, CPU, lambda x: x))
    for i, want in enumerate(expected):
        _, got = plan.batches(i)
        assert {g: got[g].labels.tolist() for g in got} == {g: want[g].tolist() for g in want}
    assert [plan.batches(i)[1][0].labels.numel() for i in range(5)] == [32, 32, 6, 32, 32]


def test_the_fairclip_protocol_selects_the_loader_sampling_and_the_plain_fp16_model():
    train_settings = get_protocol("fairclip").train
    assert train_settings["group_sampling"] == "loader" and train_settings["precision"] == "fp16-weights"
    assert get_protocol("fairbench").train.get("group_sampling", TrainSettings().group_sampling) == "reshuffle"
    # fp16-weights: the plain fp16 model and NO autocast on a GPU; fp32 on a CPU (finetune_FairCLIP.py line 142)
    assert precision_plan("fp16-weights", torch.device("cuda")) == (True, False)
    assert precision_plan("fp16-weights", CPU) == (False, False)
    assert precision_plan("auto", torch.device("cuda")) == (False, True)


# -- the released step, transcribed, beside fairbench's --------------------------------------------------------------

def _fixture(dtype: torch.dtype):
    """A tiny CLIP and a training split whose race-like groups have pools of 70, 40 and 20, in `dtype`."""
    torch.manual_seed(0)
    backbone = create_backbone("tiny", pretrained=None)
    model = backbone.model.to(dtype)
    with torch.no_grad():  # a CLIP-like logit scale, so the published similarities are CLIP-sized
        model.logit_scale.fill_(4.6052)
    n = sum(POOLS)
    gen = torch.Generator().manual_seed(1)
    words = ["cup", "disc", "rim", "glaucoma", "normal", "thin", "nerve", "optic"]
    notes = [" ".join(words[int(i)] for i in torch.randint(0, 8, (6,), generator=gen)) for _ in range(n)]
    data = SplitData(images=torch.randint(0, 256, (n, 3, 64, 64), dtype=torch.uint8, generator=gen),
                     tokens=backbone.tokenize(notes), labels=torch.arange(n) % 2, groups=_groups(*POOLS))
    normalize = lambda x: ((x.to(dtype) / 255) - 0.45) / 0.27  # noqa: E731
    return model, backbone.tokenize, data, normalize


class Recording:
    """Wraps a method to keep every loss_terms call's terms (the probe's call comes first in an epoch)."""

    def __init__(self, method) -> None:
        self.method, self.calls = method, []
        original = method.loss_terms

        def loss_terms(model, batch, group_batches):
            terms = original(model, batch, group_batches)
            self.calls.append({k: v.detach().clone() for k, v in terms.items()})
            return terms

        method.loss_terms = loss_terms


def _fairbench_steps(dtype: torch.dtype, lam: float, steps: int):
    """fairbench's fairclip-protocol training for one epoch of `steps` steps: the model after it and every call's
    loss terms."""
    model, tokenize, data, normalize = _fixture(dtype)
    start = copy.deepcopy(model)
    method = get_method("fairclip")(get_method("fairclip").settings_from({"fair_lambda": str(lam)}), "race", 3)
    recording = Recording(method)
    protocol = get_protocol("fairclip")
    assert protocol.towers_only  # the released optimiser holds the two towers only (lines 148–151)
    settings = TrainSettings(**{**protocol.train, "frozen": get_arch("tiny").frozen, "epochs": 1,
                                "max_steps_per_epoch": steps})
    small = SplitData(images=data.images[:4], tokens=data.tokens[:4], labels=torch.tensor([0, 1, 0, 1]),
                      groups=data.groups[:4])
    train(method, model, settings, train_data=data, val_data=small, test_data=small, normalize=normalize,
          tokenize=tokenize, prompts=("a photo of normal", "a photo of glaucoma"), seed=11, device=CPU,
          auc=lambda labels, scores: 0.5)
    return start, model, recording.calls, data, normalize


def _released_steps(start, data, normalize, lam: float, steps: int, seed: int = 11):
    """The transcription's first `steps` steps from `start`, drawing with a generator seeded as the trainer's."""
    model = copy.deepcopy(start)
    optimizer = released_optimizer(model)
    gen = torch.Generator().manual_seed(seed)
    shuffle = lambda n: torch.randperm(n, generator=gen)  # noqa: E731
    main = released_group_loader(torch.arange(data.labels.numel()), 32, shuffle)  # one pass = the epoch
    loaders = [released_group_loader(torch.nonzero(data.groups == g).flatten(), 32, shuffle) for g in range(3)]
    losses = []
    for _ in range(steps):
        idx = next(main)
        groups = [(normalize(data.images[i]), data.tokens[i]) for i in (next(loader) for loader in loaders)]
        optimizer.zero_grad()
        loss = released_loss(model, normalize(data.images[idx]), data.tokens[idx], groups, lam, 1e-6)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return model, losses


@pytest.mark.slow  # several fp16/fp64 steps or a 1e6-row bootstrap: seconds, not the quick loop's budget
def test_the_fairclip_step_in_fp64_without_the_fairness_term_equals_the_released_step_for_three_steps():
    start, mine, calls, data, normalize = _fairbench_steps(torch.float64, lam=0.0, steps=3)
    reference, losses = _released_steps(start, data, normalize, lam=0.0, steps=3)
    step_losses = [sum(c.values()) for c in calls[-3:]]  # the probe's call comes first
    for got, want in zip(step_losses, losses, strict=True):
        assert abs(float(got) - float(want)) <= 1e-12
    moved = 0.0
    for (name, p), q in zip(mine.named_parameters(), reference.parameters(), strict=True):
        assert (p - q).abs().max() <= 1e-12, name
        moved = max(moved, float((p - dict(start.named_parameters())[name]).detach().abs().max()))
    assert moved > 1e-6  # the three steps moved the towers: the comparison can fail
    frozen = dict(start.named_parameters())
    assert torch.equal(mine.token_embedding.weight, frozen["token_embedding.weight"])  # outside the optimiser


def test_the_fairclip_step_in_fp32_with_the_fairness_term_has_the_released_step_1_loss():
    """Step 1's loss and Sinkhorn term equal the released ones to 1e-6; later steps are not compared bit for bit,
    because the step-1 gradient is not: at blur 1e-6 the Sinkhorn's ε = 1e-12 makes fp32 `logsumexp` ties decide
    each sample's gradient, an integer multiple (1, 2, 3, ...) of its exact value, and two correct implementations
    (fairbench's fixed-length loop, geomloss's) round to different multiples, so the weights part after step 1."""
    start, _, calls, data, normalize = _fairbench_steps(torch.float32, lam=1e-6, steps=1)
    _, (want,) = _released_steps(start, data, normalize, lam=1e-6, steps=1)
    step1 = calls[-1]
    assert float(sum(step1.values())) == pytest.approx(float(want), rel=1e-6)
    # the fairness term alone, recomputed by the transcription with λ = 1 − 0 (loss(λ) − loss(0))
    _, (plain,) = _released_steps(start, data, normalize, lam=0.0, steps=1)
    assert float(step1["sinkhorn"]) == pytest.approx(float(want - plain), rel=1e-4)
    assert float(step1["sinkhorn"]) > 1e-3 * float(step1["contrastive"])  # the term is there to compare

    # the reason, shown on the batch's similarity values: fp32 gradients are integer multiples of the fp64 ones
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(32, generator=gen) * 40 + 10).double()
    y = torch.rand(32, generator=gen).double()
    y = y / y.sum()

    def grad(fn, dtype):
        xx = x.to(dtype).requires_grad_(True)
        (g,) = torch.autograd.grad(fn(xx[:, None], y.to(dtype)[:, None]), [xx])
        return g.double()

    exact = grad(lambda a, b: sinkhorn_distance(a, b, blur=1e-6), torch.float64)
    assert torch.allclose(grad(geomloss.SamplesLoss("sinkhorn", p=2, blur=1e-6), torch.float64), exact, rtol=1e-9)
    for fn in (lambda a, b: sinkhorn_distance(a, b, blur=1e-6), geomloss.SamplesLoss("sinkhorn", p=2, blur=1e-6)):
        multiple = grad(fn, torch.float32) / exact
        assert ((multiple - multiple.round()).abs() < 1e-2).all() and (multiple.round() >= 1).all()


# -- fp16 on a CPU: the protocol's GPU forward, where torch's CPU kernels run it -------------------------------------

def _half_fixture():
    model, tokenize, data, normalize = _fixture(torch.float32)
    state = copy.deepcopy(model.state_dict())
    idx = torch.arange(32)
    group_idx = [torch.nonzero(data.groups == g).flatten()[:16] for g in range(3)]
    return model, state, data, normalize, idx, group_idx


def test_fp16_forward_of_the_protocol_equals_the_transcribed_plain_fp16_forward_on_a_cpu():
    from open_clip import CLIP
    from open_clip.transformer import LayerNormFp32

    from fairbench.method import Batch

    model, state, data, normalize, idx, group_idx = _half_fixture()
    release_fp16(model)  # what the trainer does to the model under precision=fp16-weights on a GPU
    # the decision, pinned: which tensors are fp16
    params = dict(model.named_parameters())
    assert params["visual.conv1.weight"].dtype == torch.float16 and params["text_projection"].dtype == torch.float16
    assert params["visual.proj"].dtype == torch.float16
    assert params["transformer.resblocks.0.attn.in_proj_weight"].dtype == torch.float16
    for name in ("logit_scale", "token_embedding.weight", "positional_embedding", "visual.class_embedding",
                 "ln_final.weight", "visual.ln_pre.weight"):
        assert params[name].dtype == torch.float32, name
    assert all(type(m) is LayerNormFp32 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))

    # the transcription's model: open_clip's own fp16 CLIP (LayerNorm in fp32, as OpenAI's), weights converted
    # by the transcribed convert_weights, inputs cast to fp16 as OpenAI's encode_image does
    reference = CLIP(**TINY_CFG, cast_dtype=torch.float16)
    reference.load_state_dict(state)
    released_half(reference)
    assert {k: v.dtype for k, v in reference.state_dict().items()} == {
        k: v.dtype for k, v in model.state_dict().items()}

    def batch(i):
        return Batch(images=normalize(data.images[i]).half(), tokens=data.tokens[i], labels=data.labels[i],
                     groups=data.groups[i])

    settings = get_method("fairclip").settings_from({"fair_lambda": "1e-6", "group_batch_size": "16"})
    method = get_method("fairclip")(settings, "race", 3)
    step = TrainStep(method, model, torch.optim.SGD(model.parameters(), lr=0.0), None, device=CPU,
                     compute=torch.bfloat16, mixed=False)  # as the trainer builds it: no autocast
    with native_numerics(True), torch.no_grad():
        terms, _ = step.forward(batch(idx), {g: batch(i) for g, i in enumerate(group_idx)})
        lam0 = released_loss(reference, batch(idx).images, data.tokens[idx], [], 0.0, 1e-6)
        full = released_loss(reference, batch(idx).images, data.tokens[idx],
                             [(batch(i).images, data.tokens[i]) for i in group_idx], 1e-6, 1e-6)
    assert terms["contrastive"].dtype == torch.float16  # computed in fp16, as released
    assert torch.equal(terms["contrastive"], lam0)  # bit for bit
    assert float(terms["sinkhorn"]) == pytest.approx(float(full.float() - lam0.float()), rel=1e-4)


@pytest.mark.slow  # several fp16/fp64 steps or a 1e6-row bootstrap: seconds, not the quick loop's budget
def test_fairmoe_experts_are_fp16_between_fp32_optimiser_steps_under_the_protocol():
    from fairbench.method import Batch

    model, _, data, normalize, idx, group_idx = _half_fixture()
    method_cls = get_method("fairmoe")
    method = method_cls(method_cls.settings_from({"moe.form": "release", "group_batch_size": "16"}), "race", 3)
    model = method.build(model)
    release_fp16(model)
    image_head = {k: v.clone() for k, v in model.image_head.state_dict().items()}
    experts = [model.image_head.experts, model.text_head.experts,
               model.clip.visual.transformer.resblocks[-1].mlp.experts]
    assert all(p.dtype == torch.float16 for e in experts for p in e.parameters())
    optimizer = torch.optim.Adam(list(method.trainable_parameters(model)), lr=1e-3)
    step = TrainStep(method, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                     device=CPU, compute=torch.bfloat16, mixed=False, optimizer_step=fp32_optimizer_step)

    def batch(i):
        return Batch(images=normalize(data.images[i]).half(), tokens=data.tokens[i], labels=data.labels[i],
                     groups=data.groups[i])

    before = model.text_head.experts.w1.detach().clone()
    with native_numerics(True):
        for _ in range(2):
            terms, _ = step(batch(idx), {g: batch(i) for g, i in enumerate(group_idx)})
            assert all(p.dtype == torch.float16 for e in experts for p in e.parameters())
            assert {k for k in optimizer.state} and all(s["exp_avg"].dtype == torch.float32
                                                        for s in optimizer.state.values())
    assert set(terms) == {"contrastive", "sinkhorn", "fol_et", "fol_ft"}  # the release's text-only FOL
    assert terms["fol_et"].dtype == torch.float16  # its statistics in the gate's precision, as released
    assert not torch.equal(model.text_head.experts.w1, before)  # the text feature experts trained
    # the image feature MoE never trains in the release form: bit for bit its (fp16-rounded) init
    assert all(torch.equal(v, model.image_head.state_dict()[k]) for k, v in image_head.items())
