"""Simple fairness baselines: CLIP fine-tuning with one change each, on any attribute.

Each is the `clip` objective (CLIP's symmetric contrastive loss) under the same trainer and protocol, changed in one
place through the public method contract:

* `resample`  — the batches: group-balanced draws (`Method.sample_weights`), the loss unchanged.
* `reweight`  — the loss: each pair's contrastive loss weighted by its group's inverse training frequency.
* `groupdro`  — the loss: GroupDRO's online group weights (Sagawa et al., ICLR 2020).
* `adversarial` — an extra head: an attribute classifier on the image embedding behind a gradient-reversal layer
  (Ganin & Lempitsky, ICML 2015), trained with its own learning rate (`Method.parameter_groups`).

Groups are the training attribute's values (as MEDFAIR's GroupDRO, `models/GroupDRO/utils.py` line 14), not the
(label, attribute) pairs of the GroupDRO paper; rows with an unknown value belong to no group. Sampling is a trainer
setting of its own (fairbench.training.sampling): `groupdro` runs with uniform batches unless `--set
sampling=group-balanced` is given, as group_DRO's README commands do (`--reweight_groups`), and every table row names
the sampling it used. A group with no training rows is refused before training by the group-weighting methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fairbench.method import Batch, ContrastiveFineTune, SettingsError, encode_batch
from fairbench.registry import register_method
from fairbench.training.losses import clip_contrastive_per_sample
from fairbench.training.sampling import (
    GROUP_BALANCED,
    group_balanced_weights,
    group_counts,
    inverse_frequency,
    require_every_group,
)


class _GroupAware(ContrastiveFineTune):
    """A contrastive fine-tuning on the training attribute that needs every group present in training."""

    uses_attribute = True

    def prepare(self, groups: torch.Tensor | None, labels: torch.Tensor) -> None:
        if groups is None:
            raise ValueError(f"method {self.name!r} needs a training attribute (--attr)")
        self.counts = group_counts(groups, self.n_groups)
        require_every_group(self.counts, self.name, self.attribute, self.group_names)


def _on(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    return table if table.device == device else table.to(device)


@register_method("resample", description="CLIP fine-tuning on group-balanced batches: every group of the training "
                 "attribute equally likely per draw")
class Resample(_GroupAware):
    """Group-balanced resampling: the contrastive loss unchanged, each epoch N draws with replacement, row i with
    probability ∝ 1/n_{g(i)} (MEDFAIR's `resampling`, `datasets/utils.py` lines 116-126 and `BaseDataset.get_weights`
    lines 77-81; group_DRO's `--reweight_groups`, `data/dro_dataset.py` lines 43-69)."""

    sampling = GROUP_BALANCED
    reference = ("group-balanced resampling as in MEDFAIR (Zong et al., ICLR 2023) `resampling` and group_DRO's "
                 "--reweight_groups: P(draw row i) ∝ 1/n_g(i), with replacement")

    def sample_weights(self, groups: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
        return group_balanced_weights(groups, self.n_groups)


@register_method("reweight", description="CLIP fine-tuning with each pair's loss weighted by its group's inverse "
                 "training frequency N/(G·n_g)")
class Reweight(_GroupAware):
    """Inverse-frequency loss reweighting: loss = mean_i w_{g(i)} ℓ_i with w_g = N / (G · n_g) from the training
    split's group sizes, so in expectation every group contributes 1/G (the same expectation as group-balanced
    sampling with the plain mean, with a different variance). ℓ_i is pair i's symmetric contrastive loss; a row with
    an unknown attribute value keeps weight 1."""

    reference = ("inverse group-frequency loss weights, the 'reweighted ERM' of Sagawa et al., ICLR 2020 "
                 "(group_DRO data/dro_dataset.py lines 52-54): w_g = N/(G n_g)")

    def prepare(self, groups: torch.Tensor | None, labels: torch.Tensor) -> None:
        super().prepare(groups, labels)
        self.weights = inverse_frequency(self.counts).float()

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        image, text = encode_batch(model, batch)
        losses = clip_contrastive_per_sample(image, text, model.logit_scale.exp())
        self.weights = _on(self.weights, losses.device)
        g = batch.groups.long()
        w = torch.where(g >= 0, self.weights[g.clamp(min=0)], torch.ones_like(self.weights[:1]))
        return {"contrastive": (w.to(losses.dtype) * losses).mean()}


@dataclass
class GroupDROSettings:
    step_size: float = 0.01  # η: group_DRO run_expt.py line 39 (--robust_step_size), MEDFAIR hard-codes 0.01
    adjustment: float = 0.0  # C of the generalisation adjustment L_g + C/√n_g (group_DRO default "0.0", line 37)

    def __post_init__(self) -> None:
        if not (self.step_size >= 0 and self.step_size < float("inf")):
            raise SettingsError(f"groupdro setting 'step_size' must be a finite number ≥ 0, got {self.step_size!r}")
        if not (self.adjustment >= 0 and self.adjustment < float("inf")):
            raise SettingsError(f"groupdro setting 'adjustment' must be a finite number ≥ 0, got {self.adjustment!r}")


class GroupWeights(nn.Module):
    """GroupDRO's q, a buffer of the trained model: it moves with it, and a resumed run continues from it (the
    reference keeps q across epochs too, group_DRO loss.py line 32)."""

    def __init__(self, n_groups: int) -> None:
        super().__init__()
        self.register_buffer("q", torch.full((n_groups,), 1.0 / max(n_groups, 1)))


@register_method("groupdro", description="GroupDRO: online exponentiated-gradient group weights q, loss Σ_g q_g L_g "
                 "(Sagawa et al. 2020)")
class GroupDRO(_GroupAware):
    """GroupDRO (Sagawa, Koh, Hashimoto, Liang, "Distributionally Robust Neural Networks for Group Shifts", ICLR
    2020, Algorithm 1 with minibatches), as group_DRO's `LossComputer.compute_robust_loss` (loss.py lines 61-71,
    commit cbbc1c5) computes it, each training step:

        L_g  = mean contrastive loss of the batch's pairs in group g (0 for a group absent from the batch, loss.py
               lines 95-101), plus C/√n_g with n_g the training group size when C > 0;
        q_g ← q_g · exp(η · L_g),  then q ← q / Σ q   (q starts uniform and is never reset);
        loss = Σ_g q_g · L_g (without the C term: the reference's in-place addition also returns it, a constant
               that changes the logged value, not the gradient).

    q is updated only in training mode, so the trainer's gradient probe (eval mode) leaves it alone. The update runs
    on the device without any host read."""

    Settings = GroupDROSettings
    reference = ("Sagawa et al., Distributionally Robust Neural Networks for Group Shifts, ICLR 2020, Algorithm 1: "
                 "q_g <- q_g exp(eta L_g), q <- q/sum(q), loss = sum_g q_g L_g (kohpangwei/group_DRO loss.py "
                 "lines 61-71; eta default 0.01)")

    def build(self, model: nn.Module) -> nn.Module:
        model.add_module("groupdro_weights", GroupWeights(self.n_groups))
        return model

    def prepare(self, groups: torch.Tensor | None, labels: torch.Tensor) -> None:
        super().prepare(groups, labels)
        self.bonus = (self.settings.adjustment / self.counts.double().sqrt()).float()

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        image, text = encode_batch(model, batch)
        losses = clip_contrastive_per_sample(image, text, model.logit_scale.exp()).float()
        return {"robust": self.robust_loss(model.groupdro_weights.q, losses, batch.groups, model.training)}

    def robust_loss(self, q: torch.Tensor, losses: torch.Tensor, groups: torch.Tensor, update: bool) -> torch.Tensor:
        """Σ_g q_g L_g with q updated first (in place, when `update`), as loss.py lines 61-71 order it."""
        member = (groups.long()[:, None] == torch.arange(self.n_groups, device=losses.device)).to(losses.dtype)
        group_loss = (member * losses[:, None]).sum(0) / member.sum(0).clamp(min=1)
        self.bonus = _on(self.bonus, losses.device)
        new_q = q * torch.exp(self.settings.step_size * (group_loss.detach() + self.bonus))
        new_q = new_q / new_q.sum()
        if update:
            q.copy_(new_q)
        return group_loss @ new_q


@dataclass
class AdversarialSettings:
    adv_lambda: float = 1.0  # λ of the gradient-reversal layer (MEDFAIR's CFair and LNL reverse with λ = 1)
    head_lr_scale: float = 100.0  # the head's learning rate = the trainer's lr × this (a new layer, not fine-tuned)
    hidden: int = 0  # 0: a linear head; > 0: one hidden ReLU layer of this width (CFair uses 128)

    def __post_init__(self) -> None:
        if not (self.adv_lambda >= 0 and self.adv_lambda < float("inf")):
            raise SettingsError(f"adversarial setting 'adv_lambda' must be a finite number ≥ 0, got "
                                f"{self.adv_lambda!r}")
        if not (self.head_lr_scale > 0 and self.head_lr_scale < float("inf")):
            raise SettingsError(f"adversarial setting 'head_lr_scale' must be a finite number > 0, got "
                                f"{self.head_lr_scale!r}")
        if self.hidden < 0:
            raise SettingsError(f"adversarial setting 'hidden' must be an integer ≥ 0, got {self.hidden!r}")


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times −λ backward (Ganin & Lempitsky 2015, §3.2's R_λ)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    return GradientReversal.apply(x, weight)


def embedding_width(model: nn.Module) -> int:
    """The image embedding's width: open_clip towers name it `output_dim`; else the text projection's columns."""
    width = getattr(getattr(model, "visual", None), "output_dim", None)
    if width is None and getattr(model, "text_projection", None) is not None:
        width = model.text_projection.shape[-1]
    if width is None:
        raise ValueError("method 'adversarial' cannot tell the image embedding's width of this model (no "
                         "visual.output_dim or text_projection)")
    return int(width)


@register_method("adversarial", description="CLIP fine-tuning + an attribute head on the image embedding behind a "
                 "gradient-reversal layer of weight lambda")
class Adversarial(ContrastiveFineTune):
    """Adversarial debiasing with a gradient-reversal layer (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
    Backpropagation", ICML 2015): a head predicts the training attribute from the L2-normalised image embedding (the
    feature the zero-shot scores use) through R_λ, and one optimiser minimises contrastive + CE(head, attribute).
    The head learns to predict the attribute; the image tower receives −λ times that gradient, i.e. learns to hide
    it. λ is constant (no Ganin schedule); this is Zhang et al. 2018's rule without its projection term, with the
    adversary on the embedding rather than on the prediction. Rows with an unknown value are left out of the
    head's loss."""

    uses_attribute = True
    Settings = AdversarialSettings
    reference = ("Ganin & Lempitsky, Unsupervised Domain Adaptation by Backpropagation, ICML 2015: gradient-reversal "
                 "layer R_lambda (identity forward, -lambda * gradient backward), loss = L_task + L_attribute")

    def build(self, model: nn.Module) -> nn.Module:
        width, hidden = embedding_width(model), self.settings.hidden
        head = nn.Linear(width, self.n_groups) if not hidden else nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, self.n_groups))
        model.add_module("adversary", head)
        return model

    def trainable_parameters(self, model: nn.Module):
        head = {id(p) for p in model.adversary.parameters()}
        return (p for p in model.parameters() if p.requires_grad and id(p) not in head)

    def parameter_groups(self, model: nn.Module) -> list[tuple[list[nn.Parameter], float]]:
        return [(list(model.adversary.parameters()), self.settings.head_lr_scale)]

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        from fairbench.training.losses import clip_contrastive_loss

        image, text = encode_batch(model, batch)
        logits = model.adversary(reverse_gradient(image, self.settings.adv_lambda)).float()
        groups = batch.groups.long()
        known = (groups >= 0).to(logits.dtype)
        per_row = F.cross_entropy(logits, groups.clamp(min=0), reduction="none")
        return {"contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp()),
                "adversary": (per_row * known).sum() / known.sum().clamp(min=1)}
