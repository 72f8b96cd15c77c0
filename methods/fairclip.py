"""CLIP fine-tuning and FairCLIP (Luo et al., CVPR 2024).

FairCLIP adds λ · Σ_groups Sinkhorn(batch similarity distribution, group similarity distribution), with one
extra batch per group of the training attribute. Two forms of the similarity distributions are offered:

* "published" — what FairCLIP's released `finetune_FairCLIP.py` computes: with L the logit-scaled
  image×text logits of a batch, the distribution is diag(L @ L) (Σ_j L_ij L_ji, since logits_per_text = Lᵀ);
  the group side is computed without gradients and divided by its sum, the batch side is not.
* "aligned" — the quantity the paper describes, the same on both sides: each pair's cosine similarity
  ⟨f_img_i, f_txt_i⟩, with gradients through the group batches too.

Defaults follow the released launch script FairCLIP/scripts/finetune_FairCLIP.sh at HEAD (caedce4): λ = 1e-6
(line 11), group batch 32 (line 12), blur 1e-6 (line 13; an earlier commit, 4520b88, had 1e-4).

This module also registers the `fairclip` training protocol: the released fine-tuning recipe (its remaining
differences from the release are listed in the README's protocol table).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fairbench.method import Batch, ContrastiveFineTune, Method, encode_batch
from fairbench.protocols import Protocol, register_protocol
from fairbench.registry import register_method
from fairbench.training.losses import clip_contrastive_loss, sinkhorn_distance
from fairbench.training.precision import fp32_island, is_native

FORMS = ("published", "aligned")
# CLIP caps exp(logit_scale) at 100 (OpenAI's and open_clip's training clamp it there) and both protocols freeze
# it; a larger scale can only make `similarity_spread_bound` too small, which `SpreadMonitor` reports.
LOGIT_SCALE_BOUND = 100.0

log = logging.getLogger("fairbench.methods")


@register_method("clip", description="CLIP fine-tuning: symmetric contrastive loss on image-note pairs")
class CLIPFineTune(ContrastiveFineTune):
    """Plain CLIP fine-tuning; uses no protected attribute."""


@dataclass
class FairCLIPSettings:
    fair_lambda: float = 1e-6
    blur: float = 1e-6
    group_batch_size: int = 32
    form: str = "published"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            from fairbench.method import SettingsError

            raise SettingsError(f"fairclip setting 'form' must be one of {', '.join(FORMS)}, got {self.form!r}")


@fp32_island
def pair_similarities(model: nn.Module, image: torch.Tensor, text: torch.Tensor, form: str,
                      group_side: bool) -> torch.Tensor:
    """The per-sample similarity distribution FairCLIP compares (see the module docstring for the forms), in fp32
    outside autocast: it feeds the fairness loss.

    Under the `fairclip` protocol's native numerics the published form is the released expression itself
    (FairCLIP/finetune_FairCLIP.py lines 189-190 and 200-202): the diagonal of the B×B product of the logits with
    themselves in the model's precision (fp16 on a GPU), then `.float()`, and a group's division by its sum in fp32.
    Otherwise each row sum Σ_j L_ij·L_ji is formed directly in fp32 (the same value, without the B×B product)."""
    if form == "aligned":
        return (image * text).sum(-1)
    logits = model.logit_scale.exp() * image @ text.t()
    if is_native():
        sims = (logits @ logits).diagonal().float()
    else:
        sims = (logits * logits.t()).sum(-1)
    return sims / sims.sum() if group_side else sims


def joins_group_forward(device: torch.device) -> bool:
    """Whether group batches are encoded in one joined forward: on an accelerator, where it saves kernel launches
    and a step is launch-bound at the protocol's batch; not on a CPU, where a step is compute-bound and one large
    forward measured slower than one forward per group."""
    return device.type != "cpu"


def encode_groups(model: nn.Module, group_batches: dict[int, Batch], form: str,
                  join: bool | None = None) -> dict[int, tuple[torch.Tensor, ...]]:
    """Features of each group batch; the published form computes them without gradients.

    With `join` (default: `joins_group_forward` of the batches' device) ONE forward encodes all of them joined in
    dict order, split back by the batches' lengths, so nothing is read back. Every encoder here works per sample
    (the MoE's Top_c ranks tokens within a sample), so the split equals encoding each batch on its own; an MoE
    recording its gates then sees one call covering the groups in dict order, otherwise one call per group.
    """
    if not group_batches:
        return {}
    batches = list(group_batches.values())
    if join is None:
        join = joins_group_forward(batches[0].images.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and form != "published"):
        if not join:
            return {g: encode_batch(model, gb) for g, gb in group_batches.items()}
        image, text = encode_batch(model, join_batches(batches))
    sizes = [gb.images.shape[0] for gb in batches]
    return dict(zip(group_batches, zip(image.split(sizes), text.split(sizes), strict=True), strict=True))


def join_batches(batches: list[Batch]) -> Batch:
    """The batches' pairs as one batch, in order (a single batch is returned as it is)."""
    if len(batches) == 1:
        return batches[0]
    groups = [b.groups for b in batches]
    return Batch(images=torch.cat([b.images for b in batches]), tokens=torch.cat([b.tokens for b in batches]),
                 labels=torch.cat([b.labels for b in batches]),
                 groups=None if any(g is None for g in groups) else torch.cat(groups))


def similarity_spread_bound(form: str, batch_size: int) -> float:
    """An upper bound on the diameter of the values FairCLIP's Sinkhorn compares, known without reading them, so
    the Sinkhorn runs a fixed number of steps and never syncs: cosines lie in [−1, 1]; a published batch value
    Σ_j L_ij·L_ji with |L| ≤ scale lies within ±batch_size·scale², and a group's (divided by the group's sum)
    within [0, 1] when its values are positive, as CLIP's logits practically always are."""
    if form == "aligned":
        return 2.0
    return 2.0 * batch_size * LOGIT_SCALE_BOUND**2


class SpreadMonitor:
    """Counts, on the device, the Sinkhorn calls whose inputs spread beyond `similarity_spread_bound` (they anneal
    from the bound instead of their own diameter: geomloss with `diameter=bound`); `pop` reads the count once."""

    def __init__(self) -> None:
        self.count: torch.Tensor | None = None

    def add(self, over: torch.Tensor) -> None:
        """Count the True entries of `over` (one per Sinkhorn call), on the device."""
        over = over.long().sum()
        self.count = over if self.count is None else self.count + over

    def pop(self, method: str) -> dict[str, float]:
        """{"sinkhorn/over_bound": calls} since the last pop, with one warning, or {} when none went over."""
        count, self.count = self.count, None
        n = int(count) if count is not None else 0
        if not n:
            return {}
        log.warning("%s: %d Sinkhorn call(s) saw similarity values spread beyond the bound the annealing was "
                    "sized for (logit scale above %g?); they annealed from the bound, not their diameter", method, n,
                    LOGIT_SCALE_BOUND)
        return {"sinkhorn/over_bound": float(n)}


def fairclip_distance(model: nn.Module, batch: Batch, group_batches: dict[int, Batch], *, form: str = "published",
                      blur: float = 1e-6, features: tuple[torch.Tensor, torch.Tensor] | None = None,
                      group_features: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                      monitor: SpreadMonitor | None = None) -> torch.Tensor:
    """Σ over groups of Sinkhorn(batch similarities, group similarities), without host reads; group batches of
    one size (the usual case) share one batched Sinkhorn loop, each pair still with its own schedule.

    `features` / `group_features` reuse encodings the caller already made (see `encode_groups`); `monitor`
    counts the calls whose values spread beyond `similarity_spread_bound`.
    """
    image, text = features if features is not None else encode_batch(model, batch)
    if group_features is None:
        group_features = encode_groups(model, group_batches, form)
    batch_sims = pair_similarities(model, image, text, form, group_side=False)
    bound = similarity_spread_bound(form, batch_sims.shape[0])
    group_sims = [pair_similarities(model, g_image, g_text, form, group_side=True)
                  for g_image, g_text in group_features.values()]  # one extra batch per group (≤ 3)
    if not group_sims:
        return batch_sims.new_zeros(())
    x = batch_sims[:, None]
    if len({s.shape[0] for s in group_sims}) == 1:  # equal group batches, the usual case: one batched loop
        pairs = [(x.expand(len(group_sims), -1, -1), torch.stack(group_sims)[..., None])]
    else:
        pairs = [(x, s[:, None]) for s in group_sims]
    report = monitor.add if monitor is not None else None
    distances = [sinkhorn_distance(a, b, blur=blur, max_diameter=bound, over_bound=report).reshape(-1)
                 for a, b in pairs]
    return torch.cat(distances).sum()


@register_method("fairclip", description="FairCLIP: CLIP + lambda * Sinkhorn distance between batch and group "
                 "similarity distributions")
class FairCLIP(Method):
    """CLIP fine-tuning plus FairCLIP's optimal-transport fairness term on the training attribute."""

    uses_attribute = True
    group_batches = True
    Settings = FairCLIPSettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spread = SpreadMonitor()

    def group_batch_size(self) -> int:
        return self.settings.group_batch_size

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        return self.fairclip_terms(model, batch, group_batches, encode_batch(model, batch))

    def fairclip_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch],
                       features: tuple[torch.Tensor, torch.Tensor],
                       group_features: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                       ) -> dict[str, torch.Tensor]:
        """FairCLIP's two terms from the batch's `features` (and the group batches', when a subclass encoded them
        already, e.g. inside Fair-MoE's routing record): the contrastive loss and λ · the Sinkhorn distance."""
        image, text = features
        s = self.settings
        distance = fairclip_distance(model, batch, group_batches, form=s.form, blur=s.blur, features=features,
                                     group_features=group_features, monitor=self.spread)
        return {
            "contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp()),
            "sinkhorn": s.fair_lambda * distance,
        }

    def step_stats(self, model: nn.Module) -> dict[str, float]:
        return self.spread.pop(self.name)


# FairCLIP's released fine-tuning (FairCLIP/finetune_FairCLIP.py at HEAD, caedce4), which Fair-MoE's release follows:
#  - lines 148–151: Adam over `model.transformer` and `model.visual` only, two parameter groups of the same lr
#    (towers_only: the arch's `frozen` parts, fairbench.models.archs.CLIP_FROZEN for a CLIP, stay as loaded);
#  - lines 117–124 with src/modules.py lines 256–259: one endless `DataLoader(shuffle=True, drop_last=False)` per
#    group, re-iterated after each pass (`group_sampling="loader"`);
#  - lines 97–98, 141–144 and 207–212: on a GPU, the plain fp16 OpenAI model (no autocast; inputs cast to fp16 by
#    `encode_image`); each step converts every weight to fp32 (`convert_models_to_fp32`), steps, and rounds back
#    (`clip.model.convert_weights`); on a CPU everything is fp32 (`model.float()`);
#  - lines 183–204: the loss in the model's precision (fp16 logits, cross-entropy, similarity rows), the Sinkhorn on
#    `.float()` inputs (`fp32_numerics=False`: fairbench's own fp32 islands step aside);
#  - line 263: the reported epoch is the best TEST AUC, `if best_auc <= overall_auc`, so ties keep the later epoch.
register_protocol(Protocol(
    name="fairclip",
    description="the released FairCLIP / Fair-MoE fine-tuning: towers only, FairCLIP's group loaders, a plain fp16 "
                "model with an fp32 optimiser step on a GPU, best-test-epoch selection with ties to the later epoch",
    train={"select": "test", "ties": "later", "precision": "fp16-weights", "fp32_numerics": False,
           "group_sampling": "loader"},
    towers_only=True,
    differences={
        "model selection": "best TEST AUC; ties keep the later epoch (finetune_FairCLIP.py line 263)",
        "group batches": "one endless shuffled loader per group: each pass over a group's pool is a permutation cut "
                         "into batches of the group batch size, the last one short (lines 117–124)",
        "weights and compute": "a plain fp16 model (no autocast) on a GPU, fp32 only for the Adam step "
                               "(lines 141–144, 207–212); fp32 on a CPU",
        "scores and fairness losses": "in the model's precision as released (fp16 on a GPU); the Sinkhorn itself in "
                                      "fp32, as the released code's `.float()` inputs make it",
    },
))
