"""Fair-MoE's mixture-of-experts layers (Wang et al., "Fair-MoE", Section 3.1), built into an open_clip CLIP.

Embedding-based MoE: replaces the MLP of the last transformer block of an encoder. Per token, a gate MLP gives
softmax weights over M experts; Top_r keeps the k largest per token; Top_c keeps, per expert, the α largest
of those among the tokens of ONE sample (ranked by the softmax weights, the paper's Top_r(W) entries).
Feature-based MoE: on each encoder's pooled feature; gate + softmax + Top_r (k₂ of M₂), weighted sum of experts.

`MoEConfig.form` picks one coherent set of the switches below (`FORMS`); each switch left unset (None) takes
its form's value, and a switch set explicitly (`--set moe.renormalize=true`) overrides it for an ablation.

* `paper` (default): §3.1 literally. Ŵ = Top_c(Top_r(softmax)) with no renormalisation; every token, the
  pooled CLS/EOT one included, competes in Top_c; the feature MoE reads I₀² — read here as the pooled token after
  the tower's final LayerNorm, before its projection — and outputs Σ_b Ŵ_b² E_b²(I₀²) with no residual, which the
  projection then maps to the embedding. Where the paper is silent this harness chooses: feature experts start at
  random (N(0, 1/fan_in), zero biases), M₂ = 10 and k₂ = 3.
* `release`: the released code's behaviour where it is defined: experts and token gate use ReLU (the experts
  still load the pretrained MLP weights); α = floor(C·197·k/M) for every tower and arch (197 is ViT-B/16's
  image token count, hard-coded there), over all token positions, text padding included (it competes in
  Top_c and counts as FOL draws); the token MoE returns its output minus its input (the release's "No
  Residual" line: with the block's `x + mlp(ln_2(x))` that subtracts the LayerNormed input, not the residual
  stream); the feature MoE sits after the projection, is dense (softmax over all experts), one expert per
  group of the training attribute (FairMoEfinetune.py lines 126–127), with non-residual ReLU experts 4× wide that
  start as `nn.Linear` layers do (FairMoE.py lines 14–21) and a QuickGELU gate; the image feature MoE never trains
  (the released optimiser leaves it out, FairMoEfinetune.py line 215) and stays at its initialisation.
* `v0.1`: fairbench v0.1's default, kept for comparison with runs made under it: Top_r weights renormalised
  (Switch/Mixtral style), the pooled token bypasses Top_c, residual identity-initialised feature experts after
  the projection — so an untrained model equals the backbone exactly. Its cost: with the MoE in the last
  block only the pooled token's output reaches the feature, and it is never dropped, so the capacity C has
  no effect on predictions. Not the paper's method, hence not the default.

Choices the paper leaves open, made here: α = ceil(C · n · k / M) clipped to [1, n], with n the sample's real
token count (N + 1 for the image tower; for text, the tokens up to and including EOT — padding after EOT
neither competes nor counts, and gets MoE output 0; it never reaches the pooled feature through the causal
mask). A token no expert keeps gets MoE output 0: the block adds only its residual (attention output), i.e.
the token is "filtered out" as the paper intends. Embedding experts are 2-layer MLPs initialised to the
pretrained block's MLP. The dropped fraction and each expert's load are logged.

Dispatch is sparse: each expert computes only its capacity slots, gathered into one (M, B·S, D) tensor and run
through stacked expert weights with batched matmuls, then scatter-added back — no Python loop over tokens or
experts. `EmbeddingMoE.forward_dense` computes every expert on every token with the same routing (the test
reference and the benchmark's baseline). The pre-projection feature MoE runs the tower with its projection
detached for the call and applies it after the MoE, so parameter names and the projection itself are unchanged.

Gate weights are what FOL (`loss.py` beside this module) regularises; `record_routing(model)` collects them per forward.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.method import SettingsError, convert_value
from fairbench.training.precision import is_native

TOWERS = ("image", "text")
RELEASE_TOKENS = 197  # the released code's α uses ViT-B/16's image token count for every tower and arch
FEATURE_INPUTS = ("pooled", "projected")  # feature MoE before (I₀²) or after the tower's projection

# Each form's value of every switch a MoEConfig leaves unset (None); see the module docstring.
FORMS: dict[str, dict[str, Any]] = {
    "paper": {"renormalize": False, "keep_pooled": False, "relu_experts": False, "release_routing": False,
              "feature_input": "pooled", "feature_residual": False, "feature_experts": 10, "feature_top_k": 3,
              "feature_hidden_ratio": 4.0, "feature_init": "normal", "freeze_image_feature": False},
    "release": {"renormalize": False, "keep_pooled": False, "relu_experts": True, "release_routing": True,
                "feature_input": "projected", "feature_residual": False, "feature_experts": 0, "feature_top_k": 0,
                "feature_hidden_ratio": 4.0, "feature_init": "linear", "freeze_image_feature": True},
    "v0.1": {"renormalize": True, "keep_pooled": True, "relu_experts": False, "release_routing": False,
             "feature_input": "projected", "feature_residual": True, "feature_experts": 10, "feature_top_k": 3,
             "feature_hidden_ratio": 1.0, "feature_init": "normal", "freeze_image_feature": False},
}


@dataclass
class Routing:
    """One embedding-MoE routing decision for a (B, T) batch of tokens and M experts."""

    weights: torch.Tensor  # (B, T, M) combine weights Ŵ, zero where not kept; differentiable w.r.t. the gate
    kept: torch.Tensor  # (B, T, M) bool: Top_r and Top_c (or the pooled-token bypass) both keep the entry
    slots: torch.Tensor  # (B, S, M) long: token index of each capacity slot of each expert
    slot_ok: torch.Tensor  # (B, S, M) bool: the slot holds a kept token (else it is padding)
    valid: torch.Tensor  # (B, T) bool: tokens that take part (not text padding)


@dataclass
class GateRecord:
    """Gate weights of one forward call, as FOL needs them; `valid` masks tokens (None for pooled features)."""

    weights: torch.Tensor  # (B, T, M) or (B, M)
    valid: torch.Tensor | None = None


def capacity_slots(n_tokens: torch.Tensor | int, capacity: float, top_k: int, n_experts: int) -> torch.Tensor:
    """α = ceil(C·n·k/M) clipped to [1, n]; ceil so a capacity never rounds to zero (a tiny ε absorbs float noise)."""
    n = torch.as_tensor(n_tokens)
    alpha = torch.ceil(n.double() * capacity * top_k / n_experts - 1e-9).long()
    return torch.minimum(alpha.clamp_min(1), n.long().clamp_min(1))


def static_slots(n_tokens: int, capacity: float, top_k: int, n_experts: int) -> int:
    """`capacity_slots` for a host int, in the same float64 arithmetic but without a tensor (nothing to read back,
    no torch.compile graph break)."""
    alpha = math.ceil(n_tokens * capacity * top_k / n_experts - 1e-9)
    return min(max(alpha, 1), max(n_tokens, 1))


def top_r_mask(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of the last dimension (ties: lowest index first)."""
    idx = probs.topk(k, dim=-1).indices
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, True)


def release_slots(capacity: float, top_k: int, n_experts: int, n_tokens: int) -> int:
    """The released code's α: floor(C·197·k/M) whatever the tower, at most the sequence length."""
    return max(min(int(RELEASE_TOKENS * capacity * top_k / n_experts), n_tokens), 0)


def route_tokens(probs: torch.Tensor, top_k: int, capacity: float, valid: torch.Tensor | None = None,
                 pooled: torch.Tensor | None = None, renormalize: bool = True, release_alpha: bool = False) -> Routing:
    """Top_r then per-sample Top_c over gate probabilities `probs` (B, T, M); see the module docstring.

    `valid` (B, T) masks padding; `pooled` (B,) is the index of the token that bypasses Top_c (None: no bypass);
    `release_alpha` uses the released code's α (`release_slots`) instead of ceil(C·n·k/M).
    """
    B, T, M = probs.shape
    if valid is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=probs.device)
    keep_r = top_r_mask(probs, top_k) & valid[..., None]
    candidates = keep_r
    if pooled is not None:
        is_pooled = torch.zeros(B, T, dtype=torch.bool, device=probs.device)
        is_pooled[torch.arange(B, device=probs.device), pooled] = True
        candidates = keep_r & ~is_pooled[..., None]
    if release_alpha:
        n_slots = release_slots(capacity, top_k, M, T)
        alpha = torch.full((B,), n_slots, dtype=torch.long, device=probs.device)
    else:
        alpha = capacity_slots(valid.sum(1), capacity, top_k, M).to(probs.device)  # (B,)
        # A static slot count (α of a full-length sample) avoids a device sync; short texts leave slots unused.
        n_slots = static_slots(T, capacity, top_k, M)
    scores = torch.where(candidates, probs.detach(), torch.full_like(probs, -1.0))
    top = scores.topk(n_slots, dim=1)  # per sample and expert, over its tokens
    rank = torch.arange(n_slots, device=probs.device)[None, :, None]
    slot_ok = (top.values >= 0) & (rank < alpha[:, None, None])
    # Unused slots point at token 0: topk orders tied (masked) entries arbitrarily, and the dispatched index
    # set must be the same in every run for same-seed runs to agree bit for bit.
    slots = torch.where(slot_ok, top.indices, torch.zeros_like(top.indices))
    if pooled is not None:
        pooled_slot = pooled[:, None, None].expand(B, 1, M)
        slots = torch.cat([slots, pooled_slot], dim=1)
        slot_ok = torch.cat([slot_ok, keep_r.gather(1, pooled_slot)], dim=1)
    kept = torch.zeros(B, T, M, device=probs.device).scatter_reduce_(1, slots, slot_ok.float(), "amax") > 0
    base = probs * keep_r
    if renormalize:
        base = base / base.sum(-1, keepdim=True).clamp_min(torch.finfo(base.dtype).tiny)
    return Routing(weights=base * kept, kept=kept, slots=slots, slot_ok=slot_ok, valid=valid)


def gate_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The gate's softmax: in fp32 (fairbench's numerics), or in the gate's own precision under the `fairclip`
    protocol's native numerics, as the released fp16 model computes it (FairMoE.py lines 39, 75: `nn.Softmax` on
    the fp16 gate output)."""
    return logits.softmax(-1) if is_native() else logits.float().softmax(-1)


class QuickGELU(nn.Module):
    """x·σ(1.702·x), the activation of OpenAI's CLIP and of the released code's feature-MoE gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_gate(dim: int, n_experts: int, hidden_ratio: float, act: nn.Module | None = None) -> nn.Module:
    """The gating MLP (dim → hidden → M); default init gives small, varied logits, so routing differs per token."""
    hidden = max(int(dim * hidden_ratio), n_experts)
    return nn.Sequential(nn.Linear(dim, hidden), act if act is not None else nn.GELU(), nn.Linear(hidden, n_experts))


EXPERT_INITS = ("normal", "linear")


class StackedExperts(nn.Module):
    """M two-layer MLPs with weights stacked as (M, D, H) and (M, H, D), applied with batched matmuls.

    `init` = "normal": weights N(0, 1/fan_in), zero biases (this harness's choice); "linear": what M separate
    `nn.Linear` layers start as, PyTorch's default, weights and biases U(−1/√fan_in, 1/√fan_in) (kaiming_uniform
    with a = √5), as the released Fair-MoE's experts do (FairMoE.py lines 14–21: `Expert` is two `nn.Linear`)."""

    def __init__(self, n_experts: int, dim: int, hidden: int, act: nn.Module, init: str = "normal") -> None:
        super().__init__()
        if init not in EXPERT_INITS:
            raise ValueError(f"expert init must be one of {', '.join(EXPERT_INITS)}, got {init!r}")
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, dim))
        self.act = act
        if init == "normal":
            nn.init.normal_(self.w1, std=dim**-0.5)
            nn.init.normal_(self.w2, std=hidden**-0.5)
        else:
            for weight, bias, fan_in in ((self.w1, self.b1, dim), (self.w2, self.b2, hidden)):
                nn.init.uniform_(weight, -fan_in**-0.5, fan_in**-0.5)
                nn.init.uniform_(bias, -fan_in**-0.5, fan_in**-0.5)

    def half_precision_parameters(self) -> list[nn.Parameter]:
        """Every parameter: the stacked form of `nn.Linear` weights and biases, which FairCLIP's fp16 recipe
        (`fairbench.training.precision.release_fp16`) keeps in fp16 like the released experts."""
        return [self.w1, self.b1, self.w2, self.b2]

    @classmethod
    def from_mlp(cls, mlp: nn.Module, n_experts: int, act: nn.Module | None = None) -> StackedExperts:
        """M copies of an open_clip block MLP (c_fc, activation, c_proj), with its activation unless `act` is given."""
        c_fc, c_proj = mlp.c_fc, mlp.c_proj
        act = act if act is not None else copy.deepcopy(mlp.gelu)
        experts = cls(n_experts, c_fc.in_features, c_fc.out_features, act)
        with torch.no_grad():
            experts.w1.copy_(c_fc.weight.t().expand_as(experts.w1))
            experts.b1.copy_(c_fc.bias.expand_as(experts.b1))
            experts.w2.copy_(c_proj.weight.t().expand_as(experts.w2))
            experts.b2.copy_(c_proj.bias.expand_as(experts.b2))
        return experts.to(c_fc.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, N, D): row block m goes through expert m."""
        h = self.act(torch.baddbmm(self.b1[:, None, :], x, self.w1))
        return torch.baddbmm(self.b2[:, None, :], h, self.w2)


class EmbeddingMoE(nn.Module):
    """Drop-in replacement for a transformer block's MLP: (B, T, D) → (B, T, D), sparsely dispatched."""

    def __init__(self, experts: StackedExperts, gate: nn.Module, top_k: int, capacity: float, *,
                 renormalize: bool = True, keep_pooled: bool = True, pooled_first: bool = False,
                 release_routing: bool = False) -> None:
        super().__init__()
        self.experts = experts
        self.gate = gate
        self.n_experts = experts.w1.shape[0]
        if not 1 <= top_k <= self.n_experts:
            raise ValueError(f"top_k must be in 1..{self.n_experts} (the number of experts), got {top_k}")
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0, got {capacity}")
        self.top_k, self.capacity = top_k, capacity
        self.renormalize, self.keep_pooled = renormalize, keep_pooled
        self.pooled_first = pooled_first  # image tower: the CLS token (index 0) is the pooled token
        # The released code's token MoE: its α, every position competes, output minus input (module docstring).
        self.release_routing = release_routing
        # Per-call token layout, set by MoECLIP.encode_text for the text tower (padding, EOT index).
        self.token_valid: torch.Tensor | None = None
        self.pooled_index: torch.Tensor | None = None
        self.recording: list[GateRecord] | None = None
        self._stats: dict[str, torch.Tensor] = {}

    @classmethod
    def from_mlp(cls, mlp: nn.Module, n_experts: int, top_k: int, capacity: float, *, gate_hidden_ratio: float = 0.25,
                 relu: bool = False, **kwargs) -> EmbeddingMoE:
        """An MoE whose experts all start as `mlp` (an open_clip block MLP); `relu`: ReLU experts and gate."""
        experts = StackedExperts.from_mlp(mlp, n_experts, nn.ReLU() if relu else None)
        gate_act = nn.ReLU() if relu else None
        gate = make_gate(mlp.c_fc.in_features, n_experts, gate_hidden_ratio, gate_act).to(mlp.c_fc.weight.device)
        return cls(experts, gate, top_k, capacity, **kwargs)

    def route(self, x: torch.Tensor) -> Routing:
        B, T, _ = x.shape
        valid = self.token_valid
        if valid is not None and valid.shape != (B, T):
            raise ValueError(f"token mask of shape {tuple(valid.shape)} does not fit tokens of shape {(B, T)}")
        pooled = self.pooled_index
        if pooled is None and self.pooled_first:
            pooled = torch.zeros(B, dtype=torch.long, device=x.device)
        probs = gate_softmax(self.gate(x))
        return route_tokens(probs, self.top_k, self.capacity, valid, pooled if self.keep_pooled else None,
                            self.renormalize, release_alpha=self.release_routing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.route(x)
        self._observe(routing)
        B, T, D = x.shape
        M, S = self.n_experts, routing.slots.shape[1]
        offsets = torch.arange(B, device=x.device)[:, None, None] * T
        flat = (routing.slots + offsets).permute(2, 0, 1).reshape(M, B * S)  # token row of each slot
        w = (routing.weights.gather(1, routing.slots) * routing.slot_ok).permute(2, 0, 1).reshape(M, B * S, 1)
        # index_select, not x[flat]: its backward is index_add_, deterministic on CPU with repeated indices.
        gathered = x.reshape(B * T, D).index_select(0, flat.reshape(-1)).reshape(M, B * S, D)
        y = self.experts(gathered)  # (M, B·S, D): each expert only on its slots
        contrib = (y * w.to(y.dtype)).reshape(M * B * S, D)
        out = x.new_zeros(B * T, D).index_add_(0, flat.reshape(-1), contrib.to(x.dtype)).reshape(B, T, D)
        return out - x if self.release_routing else out

    def forward_dense(self, x: torch.Tensor, routing: Routing | None = None) -> torch.Tensor:
        """Every expert on every token, masked by the same routing: the reference the sparse path must equal."""
        routing = routing if routing is not None else self.route(x)
        B, T, D = x.shape
        y = self.experts(x.reshape(1, B * T, D).expand(self.n_experts, B * T, D))  # (M, B·T, D)
        out = torch.einsum("mnd,nm->nd", y, routing.weights.reshape(B * T, -1).to(y.dtype)).reshape(B, T, D)
        return out - x if self.release_routing else out

    def _observe(self, routing: Routing) -> None:
        if self.recording is not None:
            self.recording.append(GateRecord(routing.weights, routing.valid))
        if not self.training:
            return
        with torch.no_grad():
            kept_any = routing.kept.any(-1)
            add = {"tokens": routing.valid.sum(), "dropped": (routing.valid & ~kept_any).sum(),
                   "load": routing.kept.sum((0, 1))}
            for key, value in add.items():
                self._stats[key] = self._stats.get(key, 0) + value

    def pop_stats(self) -> dict[str, float]:
        """Fraction of tokens no expert kept and each expert's share of kept assignments, since the last call."""
        stats, self._stats = self._stats, {}
        if not stats:
            return {}
        return {"dropped": float(stats["dropped"]) / max(float(stats["tokens"]), 1.0), **_load_shares(stats["load"])}


def _load_shares(load: torch.Tensor) -> dict[str, float]:
    """Each expert's share of the kept assignments counted since the last report."""
    load = load.double()
    return {f"load_{j}": float(v) for j, v in enumerate((load / load.sum().clamp_min(1)).tolist())}


class FeatureMoE(nn.Module):
    """Fair-MoE's feature-based MoE on a pooled feature (B, E): gate, softmax, Top_r (k₂), weighted experts.

    `residual`: experts are x + E(x) with E's output layer zeroed, so the layer starts as the identity (form
    v0.1); otherwise plain randomly initialised MLPs, Σ_b Ŵ_b E_b(x) (the paper and the release).
    """

    def __init__(self, dim: int, n_experts: int, top_k: int, act: nn.Module, *, hidden_ratio: float = 1.0,
                 gate_hidden_ratio: float = 0.25, renormalize: bool = True, residual: bool = True,
                 gate_act: nn.Module | None = None, init: str = "normal") -> None:
        super().__init__()
        if n_experts < 1 or not 0 <= top_k <= n_experts:
            raise ValueError(f"feature MoE needs ≥ 1 expert and 0 ≤ top_k ≤ experts, got {n_experts}, {top_k}")
        hidden = max(int(dim * hidden_ratio), 1)
        self.n_experts, self.top_k, self.renormalize, self.residual = n_experts, top_k, renormalize, residual
        self.gate = make_gate(dim, n_experts, gate_hidden_ratio, gate_act)
        self.experts = StackedExperts(n_experts, dim, hidden, act, init=init)
        if residual:
            with torch.no_grad():  # a zero output layer: every residual expert starts as the identity
                self.experts.w2.zero_()
        self.recording: list[GateRecord] | None = None
        self._stats: dict[str, torch.Tensor] = {}

    def gate_weights(self, f: torch.Tensor) -> torch.Tensor:
        probs = gate_softmax(self.gate(f))
        if not self.top_k or self.top_k == self.n_experts:
            return probs  # dense softmax (the released code's form)
        w = probs * top_r_mask(probs, self.top_k)
        return w / w.sum(-1, keepdim=True) if self.renormalize else w

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        w = self.gate_weights(f)
        if self.recording is not None:
            self.recording.append(GateRecord(w))
        if self.training:
            with torch.no_grad():
                self._stats["load"] = self._stats.get("load", 0) + (w > 0).sum(0)
        # All M₂ experts on all B features: B vectors are cheaper to compute densely than to gather.
        y = self.experts(f[None].expand(self.n_experts, *f.shape))  # (M, B, E)
        y = f[None] + y if self.residual else y
        return torch.einsum("mbe,bm->be", y, w.to(y.dtype))

    def pop_stats(self) -> dict[str, float]:
        stats, self._stats = self._stats, {}
        if not stats:
            return {}
        return _load_shares(stats["load"])


@dataclass
class MoEConfig:
    """Where and how Fair-MoE's layers go into a CLIP (defaults: the released code's M = 10, k = 3, C = 0.8).

    `form` sets every switch left at None (see `FORMS` and the module docstring); `resolved()` fills them in.
    """

    form: str = "paper"  # paper | release | v0.1
    experts: int = 10  # M, embedding-based MoE
    top_k: int = 3  # k, Top_r per token
    capacity: float = 0.8  # C, Top_c keeps α = ceil(C·(N+1)·k/M) tokens per expert and sample
    renormalize: bool | None = None  # divide each token's Top_r weights by their sum
    keep_pooled: bool | None = None  # the CLS/EOT token bypasses Top_c
    relu_experts: bool | None = None  # ReLU in every expert and the token gate instead of the backbone's activation
    release_routing: bool | None = None  # the released token MoE: α = floor(C·197·k/M), padding competes, out − in
    gate_hidden_ratio: float = 0.25  # gate MLP hidden width / input width
    feature_input: str | None = None  # pooled (I₀², before the projection) | projected (after it)
    feature_residual: bool | None = None  # residual, identity-initialised feature experts
    feature_experts: int | None = None  # M₂, feature-based MoE; 0 = one per group of the training attribute
    feature_top_k: int | None = None  # k₂; 0 = dense softmax
    feature_hidden_ratio: float | None = None  # feature expert hidden width / input width
    feature_init: str | None = None  # normal (N(0, 1/fan_in), zero biases) | linear (nn.Linear's default)
    freeze_image_feature: bool | None = None  # the image feature MoE never trains (stays at its init)
    embedding_moe: bool = True
    feature_moe: bool = True
    towers: tuple[str, ...] = field(default=TOWERS)  # encoders that get FO-MoE (and so their FOL terms)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise SettingsError(f"moe.form must be one of {', '.join(FORMS)} (got {self.form!r})")
        for name, like in FORMS[self.form].items():  # `--set` strings for switches whose default is None
            value = getattr(self, name)
            if isinstance(value, str) and not isinstance(like, str):
                setattr(self, name, convert_value(value, like, f"setting 'moe.{name}'"))
        if self.feature_input is not None and self.feature_input not in FEATURE_INPUTS:
            raise SettingsError(f"moe.feature_input must be one of {', '.join(FEATURE_INPUTS)} "
                                f"(got {self.feature_input!r})")
        if self.feature_init is not None and self.feature_init not in EXPERT_INITS:
            raise SettingsError(f"moe.feature_init must be one of {', '.join(EXPERT_INITS)} "
                                f"(got {self.feature_init!r})")

    def resolved(self) -> MoEConfig:
        """This config with every unset switch replaced by its form's value."""
        unset = {name: value for name, value in FORMS[self.form].items() if getattr(self, name) is None}
        return dataclasses.replace(self, **unset)


def text_layout(text: torch.Tensor, pool_type: str, eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid (B, L), pooled index (B,)) for token ids, following open_clip's text pooling."""
    B, L = text.shape
    if pool_type == "argmax":  # OpenAI tokenizer: EOT has the largest id; zeros pad after it
        pooled = text.argmax(-1)
    elif pool_type == "eos" and eos_id is not None:
        pooled = (text == eos_id).int().argmax(-1)
    elif pool_type == "first":
        pooled = torch.zeros(B, dtype=torch.long, device=text.device)
    else:  # "last" or unknown: every position counts
        pooled = torch.full((B,), L - 1, dtype=torch.long, device=text.device)
    valid = torch.arange(L, device=text.device)[None, :] <= pooled[:, None]
    if pool_type == "first":
        valid = torch.ones_like(valid)
    return valid, pooled


class MoECLIP(nn.Module):
    """A CLIP with Fair-MoE layers; keeps CLIP's `encode_image`/`encode_text`/`logit_scale` API.

    Other attributes fall through to the wrapped CLIP (`visual`, `transformer`, ...).
    """

    def __init__(self, clip: nn.Module, image_head: FeatureMoE | None = None, text_head: FeatureMoE | None = None,
                 feature_input: str = "projected"):
        super().__init__()
        self.clip = clip
        self.image_head = image_head
        self.text_head = text_head
        self.feature_input = feature_input  # "pooled": the heads read the feature before the projection

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("clip"), name)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def text_moe(self) -> EmbeddingMoE | None:
        mlp = self.clip.transformer.resblocks[-1].mlp
        return mlp if isinstance(mlp, EmbeddingMoE) else None

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self._with_head(self.image_head, self.clip.visual, "proj", lambda: self.clip.encode_image(image))
        return F.normalize(x, dim=-1) if normalize else x

    def _with_head(self, head: FeatureMoE | None, owner: nn.Module, proj_name: str, encode) -> torch.Tensor:
        """Run `encode` and the feature MoE: after the projection, or on the pooled token before it."""
        if head is None:
            return encode()
        if self.feature_input == "projected":
            return head(encode())
        with detached(owner, proj_name) as proj:
            pooled = encode()  # the tower's pooled token after its final LayerNorm: the paper's I₀²
        return project(head(pooled), proj)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self._with_head(self.text_head, self.clip, "text_projection", lambda: self._encode_text_tokens(text))
        return F.normalize(x, dim=-1) if normalize else x

    def _encode_text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        layer = self.text_moe()
        if layer is None or layer.release_routing:  # the release routes every position, padding included
            return self.clip.encode_text(text)
        pool = getattr(self.clip, "text_pool_type", "argmax")
        layer.token_valid, layer.pooled_index = text_layout(text, pool, getattr(self.clip, "text_eos_id", None))
        try:
            return self.clip.encode_text(text)
        finally:
            layer.token_valid = layer.pooled_index = None

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """As open_clip's CLIP.forward without output_dict: normalised features and exp(logit_scale)."""
        img = self.encode_image(image, normalize=True) if image is not None else None
        txt = self.encode_text(text, normalize=True) if text is not None else None
        return img, txt, self.logit_scale.exp()

    def moe_layers(self) -> dict[str, EmbeddingMoE | FeatureMoE]:
        """Named MoE layers: image/text × embedding/feature, only those present."""
        found: dict[str, EmbeddingMoE | FeatureMoE] = {}
        towers = (("image", self.clip.visual.transformer.resblocks), ("text", self.clip.transformer.resblocks))
        for tower, blocks in towers:
            if isinstance(blocks[-1].mlp, EmbeddingMoE):
                found[f"{tower}_embedding"] = blocks[-1].mlp
        for tower, head in (("image", self.image_head), ("text", self.text_head)):
            if head is not None:
                found[f"{tower}_feature"] = head
        return found


@contextmanager
def detached(owner: nn.Module, name: str) -> Iterator[nn.Module | torch.Tensor | None]:
    """`owner.name` (a projection) set to None for the block, so open_clip's tower returns the unprojected feature;
    yields the projection and puts it back (same object, same parameter name) afterwards."""
    proj = getattr(owner, name)
    setattr(owner, name, None)
    try:
        yield proj
    finally:
        setattr(owner, name, proj)


def project(x: torch.Tensor, proj: nn.Module | torch.Tensor | None) -> torch.Tensor:
    """Apply a CLIP projection as open_clip does: a Linear module, a matrix, or none."""
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Module) else x @ proj


def build_fair_moe(clip: nn.Module, config: MoEConfig, n_groups: int = 0) -> MoECLIP:
    """Swap Fair-MoE's layers into an open_clip CLIP (in place) and wrap it; see the module docstring."""
    config = config.resolved()
    towers = {"image": getattr(clip, "visual", None), "text": clip}
    for name in config.towers:
        if name not in towers:
            raise ValueError(f"unknown tower {name!r} in Fair-MoE config; use 'image' and/or 'text'")
        tower = towers[name]
        blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        if blocks is None or not hasattr(blocks[-1], "mlp") or not hasattr(blocks[-1].mlp, "c_fc"):
            raise ValueError(f"Fair-MoE needs an open_clip CLIP whose {name} tower has transformer.resblocks with "
                             f"c_fc/c_proj MLPs (got {type(clip).__name__}); use an arch like 'tiny', 'b16' or 'l14'")
        if not getattr(tower.transformer, "batch_first", True):
            raise ValueError(f"Fair-MoE expects batch-first (B, N, D) tokens; the {name} transformer is not")
    heads: dict[str, FeatureMoE] = {}
    m2 = config.feature_experts or n_groups
    if config.feature_moe and m2 < 1:
        raise ValueError("feature_experts = 0 means one expert per group, but the training attribute has no groups")
    for name in config.towers:
        tower = towers[name]
        mlp = tower.transformer.resblocks[-1].mlp
        act = copy.deepcopy(mlp.gelu if not isinstance(mlp, EmbeddingMoE) else mlp.experts.act)
        act = nn.ReLU() if config.relu_experts else act
        if config.embedding_moe and not isinstance(mlp, EmbeddingMoE):
            pooled_first = name == "image" and getattr(tower, "pool_type", "tok") == "tok"
            tower.transformer.resblocks[-1].mlp = EmbeddingMoE.from_mlp(
                mlp, config.experts, config.top_k, config.capacity, gate_hidden_ratio=config.gate_hidden_ratio,
                relu=config.relu_experts, renormalize=config.renormalize, keep_pooled=config.keep_pooled,
                pooled_first=pooled_first, release_routing=config.release_routing)
        if config.feature_moe:
            dim = _feature_dim(clip, name, config.feature_input)
            k2 = min(config.feature_top_k, m2)
            heads[name] = FeatureMoE(dim, m2, k2, act, hidden_ratio=config.feature_hidden_ratio,
                                     gate_hidden_ratio=config.gate_hidden_ratio, renormalize=config.renormalize,
                                     residual=config.feature_residual,
                                     gate_act=QuickGELU() if config.release_routing else None,
                                     init=config.feature_init)
    device = next(clip.parameters()).device
    return MoECLIP(clip, heads.get("image"), heads.get("text"), feature_input=config.feature_input).to(device)


def _feature_dim(clip: nn.Module, tower: str, feature_input: str) -> int:
    """Width of the feature the head reads: the pooled token's (before the projection) or the embedding's."""
    proj = clip.visual.proj if tower == "image" else clip.text_projection
    if proj is None:
        return clip.visual.transformer.width if tower == "image" else clip.transformer.width
    if feature_input == "pooled":
        return proj.in_features if isinstance(proj, nn.Linear) else proj.shape[0]
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


def moe_layers(model: nn.Module) -> dict[str, EmbeddingMoE | FeatureMoE]:
    """The Fair-MoE layers of a model built by `build_fair_moe` (empty for any other model)."""
    return model.moe_layers() if isinstance(model, MoECLIP) else {}


@contextmanager
def record_routing(model: nn.Module) -> Iterator[dict[str, list[GateRecord]]]:
    """Collect every MoE layer's gate weights (with gradients) per forward call, in call order."""
    layers = moe_layers(model)
    records: dict[str, list[GateRecord]] = {name: [] for name in layers}
    for name, layer in layers.items():
        layer.recording = records[name]
    try:
        yield records
    finally:
        for layer in layers.values():
            layer.recording = None


def routing_stats(model: nn.Module) -> dict[str, float]:
    """Per-layer dropped-token fraction and expert loads accumulated since the last call (then reset)."""
    out: dict[str, float] = {}
    for name, layer in moe_layers(model).items():
        out.update({f"moe/{name}/{k}": v for k, v in layer.pop_stats().items()})
    return out


__all__ = ["FORMS", "EmbeddingMoE", "FeatureMoE", "GateRecord", "MoECLIP", "MoEConfig", "Routing", "StackedExperts",
           "build_fair_moe", "capacity_slots", "moe_layers", "record_routing", "release_slots", "route_tokens",
           "routing_stats", "static_slots", "text_layout", "top_r_mask"]
