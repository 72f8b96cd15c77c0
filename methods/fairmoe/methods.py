"""Fair-MoE (Wang et al.): FairCLIP's loss on a CLIP with FO-MoE layers, plus the Fairness-Oriented Loss (FOL).

Loss = CLIP contrastive + λ · L_distance (FairCLIP's Sinkhorn term, same λ/form/blur settings as `fairclip`)
+ fol_ei·F_EI + fol_et·F_ET + fol_fi·F_FI + fol_ft·F_FT (`loss.py`). The model is built by
`layers.build_fair_moe`. Every ablation of the paper is its own registered name whose only
difference is its Settings defaults, so `--method 'fairmoe*'` runs the study (and `fairclip-fom` is Table 2's
"FairCLIP w. FOM", the same model as `fairmoe-no-fol`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fairbench.losses import clip_contrastive_loss
from fairbench.method import Batch, Method, SettingsError, encode_batch
from fairbench.registry import register_method

from ..fairclip import FairCLIPSettings, encode_groups, fairclip_distance
from .layers import MoEConfig, build_fair_moe, record_routing, routing_stats
from .loss import FORMS as FOL_FORMS
from .loss import LAYER_TERMS, fol_terms


@dataclass
class FairMoESettings(FairCLIPSettings):
    """FairCLIP's settings plus FO-MoE's shape and FOL's weights (defaults: the released code's M, k, C)."""

    experts: int = 10  # M, embedding-based MoE
    top_k: int = 3  # k, Top_r per token
    capacity: float = 0.8  # C, Top_c keeps α = ceil(C·(N+1)·k/M) tokens per expert and sample
    renormalize: bool = True  # divide each token's Top_r weights by their sum
    keep_pooled: bool = True  # the CLS/EOT token bypasses Top_c
    gate_hidden_ratio: float = 0.25  # gate MLP hidden width / input width
    feature_experts: int = 10  # M₂, feature-based MoE; 0 = one per group (released code)
    feature_top_k: int = 3  # k₂; 0 = dense softmax (released code)
    feature_hidden_ratio: float = 1.0
    embedding_moe: bool = True
    feature_moe: bool = True
    image_moe: bool = True  # FO-MoE (and so its FOL terms) in the image tower
    text_moe: bool = True
    fol_ei: float = 1.0
    fol_et: float = 1.0
    fol_fi: float = 1.0
    fol_ft: float = 1.0
    fol_form: str = "paper"  # or "released"
    fol_released_lambda: float = 1.0  # λ of the released form's "− λ·Var(batch)"; its released value is unknown

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if self.experts < 1 or not 1 <= self.top_k <= self.experts:
            problems.append(f"need experts ≥ 1 and 1 ≤ top_k ≤ experts (got experts={self.experts}, "
                            f"top_k={self.top_k})")
        if self.capacity <= 0:
            problems.append(f"capacity must be > 0 (got {self.capacity})")
        if self.feature_experts < 0 or self.feature_top_k < 0 or (
                self.feature_experts and self.feature_top_k > self.feature_experts):
            problems.append(f"need 0 ≤ feature_top_k ≤ feature_experts (got {self.feature_top_k}, "
                            f"{self.feature_experts})")
        if self.fol_form not in FOL_FORMS:
            problems.append(f"fol_form must be one of {', '.join(FOL_FORMS)} (got {self.fol_form!r})")
        if problems:
            raise SettingsError("fairmoe settings: " + "; ".join(problems))

    def moe_config(self) -> MoEConfig:
        towers = tuple(t for t, on in (("image", self.image_moe), ("text", self.text_moe)) if on)
        return MoEConfig(experts=self.experts, top_k=self.top_k, capacity=self.capacity,
                         renormalize=self.renormalize, keep_pooled=self.keep_pooled,
                         gate_hidden_ratio=self.gate_hidden_ratio, feature_experts=self.feature_experts,
                         feature_top_k=self.feature_top_k, feature_hidden_ratio=self.feature_hidden_ratio,
                         embedding_moe=self.embedding_moe, feature_moe=self.feature_moe, towers=towers)

    def fol_weights(self) -> dict[str, float]:
        return {term: float(getattr(self, term)) for term in LAYER_TERMS.values()}


@register_method("fairmoe", description="Fair-MoE: FO-MoE in both encoders + FOL (variance gaps + Sinkhorn) (Table 1)")
class FairMoE(Method):
    """Fair-MoE: CLIP with embedding- and feature-based MoE layers, trained with FairCLIP's loss plus FOL."""

    uses_attribute = True
    group_batches = True
    Settings = FairMoESettings

    def build(self, model: nn.Module) -> nn.Module:
        return build_fair_moe(model, self.settings.moe_config(), n_groups=self.n_groups)

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        s = self.settings
        # One encoding per batch serves the contrastive loss, L_distance and FOL: the MoE layers record their
        # gate weights for the main batch, then for each group batch in dict order (matching `codes` below).
        with record_routing(model) as records:
            image, text = encode_batch(model, batch)
            group_features = encode_groups(model, group_batches, s.form)
        distance = fairclip_distance(model, batch, group_batches, form=s.form, blur=s.blur, features=(image, text),
                                     group_features=group_features)
        terms = {"contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp()),
                 "sinkhorn": s.fair_lambda * distance}
        codes = [_codes(batch, -1)] + [_codes(gb, g) for g, gb in group_batches.items()]
        terms.update(fol_terms(records, codes, self.n_groups, s.fol_weights(), form=s.fol_form,
                               released_lambda=s.fol_released_lambda))
        return terms

    def step_stats(self, model: nn.Module) -> dict[str, float]:
        return routing_stats(model)


def _codes(batch: Batch, fallback: int) -> torch.Tensor:
    if batch.groups is not None:
        return batch.groups.long()
    return torch.full((batch.labels.shape[0],), fallback, dtype=torch.long, device=batch.labels.device)


NO_FOL = {"fol_ei": 0.0, "fol_et": 0.0, "fol_fi": 0.0, "fol_ft": 0.0}

# name → (description, Settings defaults that differ from `fairmoe`)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fairclip-fom": ("FairCLIP with FO-MoE: FairCLIP's loss on the Fair-MoE model, no FOL variance terms (Table 2)",
                     NO_FOL),
    "fairmoe-no-fol": ("Fair-MoE without FOL's variance terms; same model as fairclip-fom (Table 3)", NO_FOL),
    "fairmoe-no-fei": ("Fair-MoE without F_EI, the image embedding-MoE FOL term (Table 4)", {"fol_ei": 0.0}),
    "fairmoe-no-fet": ("Fair-MoE without F_ET, the text embedding-MoE FOL term (Table 4)", {"fol_et": 0.0}),
    "fairmoe-no-ffi": ("Fair-MoE without F_FI, the image feature-MoE FOL term (Table 4)", {"fol_fi": 0.0}),
    "fairmoe-no-fft": ("Fair-MoE without F_FT, the text feature-MoE FOL term (Table 4)", {"fol_ft": 0.0}),
    "fairmoe-no-em": ("Fair-MoE without the embedding-based MoE (Table 5)", {"embedding_moe": False}),
    "fairmoe-no-fm": ("Fair-MoE without the feature-based MoE (Table 5)", {"feature_moe": False}),
    "fairmoe-no-text-moe": ("Fair-MoE with FO-MoE and FOL removed from the text encoder (Table 6)",
                            {"text_moe": False}),
    "fairmoe-no-image-moe": ("Fair-MoE with FO-MoE and FOL removed from the image encoder (Table 6)",
                             {"image_moe": False}),
}


def _register_variant(name: str, description: str, defaults: dict[str, Any]) -> type[FairMoE]:
    """A FairMoE subclass whose Settings differ only in `defaults`, registered under `name`."""
    cls_name = "".join(part.capitalize() for part in name.split("-"))
    fields = [(key, type(value), dataclasses.field(default=value)) for key, value in defaults.items()]
    settings = dataclasses.make_dataclass(f"{cls_name}Settings", fields, bases=(FairMoESettings,))
    settings.__module__ = __name__
    cls = type(cls_name, (FairMoE,), {"Settings": settings, "__doc__": description, "__module__": __name__})
    return register_method(name, description=description)(cls)


for _name, (_description, _defaults) in VARIANTS.items():
    _cls = _register_variant(_name, _description, _defaults)
    globals()[_cls.__name__] = _cls
    globals()[_cls.Settings.__name__] = _cls.Settings
