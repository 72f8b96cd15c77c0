"""Fair-MoE (Wang et al.): FairCLIP's loss on a CLIP with FO-MoE layers, plus the Fairness-Oriented Loss (FOL).

Loss = CLIP contrastive + λ · L_distance (FairCLIP's Sinkhorn term, same λ/form/blur settings as `fairclip`)
+ fol.ei·F_EI + fol.et·F_ET + fol.fi·F_FI + fol.ft·F_FT (`loss.py`). The model is built by
`layers.build_fair_moe` from the `moe` settings group. Every ablation of the paper is its own registered name
whose only difference is its Settings defaults (one `register_variant` line each, below), so
`--method 'fairmoe*'` runs the study (and `fairclip-fom` is Table 2's "FairCLIP w. FOM", the same model as
`fairmoe-no-fol`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fairbench.method import Batch, SettingsError, encode_batch
from fairbench.registry import register_method

from ..fairclip import FairCLIP, FairCLIPSettings, encode_groups
from .layers import TOWERS, MoEConfig, build_fair_moe, moe_layers, record_routing, routing_stats
from .loss import FOLConfig, fol_terms


@dataclass
class FairMoESettings(FairCLIPSettings):
    """FairCLIP's settings plus FO-MoE's shape (`--set moe.capacity=…`) and FOL's weights (`--set fol.ei=…`).

    FairCLIP's term keeps FairCLIP's launch-script values (λ 1e-6, blur 1e-6, group batch 32) in every form: the
    Fair-MoE release's argparse defaults (1e-4, 1e-4, 64; FairMoEfinetune.py lines 57–59) are FairCLIP's own argparse
    defaults (finetune_FairCLIP.py lines 50–52), which FairCLIP's script overrides, and the release ships no launch
    script of its own; the paper aligns its protocol with FairCLIP's (§4.1)."""

    moe: MoEConfig = field(default_factory=MoEConfig)
    fol: FOLConfig = field(default_factory=FOLConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        moe, problems = self.moe.resolved(), []
        if moe.experts < 1 or not 1 <= moe.top_k <= moe.experts:
            problems.append(f"need moe.experts ≥ 1 and 1 ≤ moe.top_k ≤ moe.experts (got moe.experts={moe.experts}, "
                            f"moe.top_k={moe.top_k})")
        if moe.capacity <= 0:
            problems.append(f"moe.capacity must be > 0 (got {moe.capacity})")
        if moe.feature_hidden_ratio <= 0:
            problems.append(f"moe.feature_hidden_ratio must be > 0 (got {moe.feature_hidden_ratio})")
        if moe.feature_experts < 0 or moe.feature_top_k < 0 or (
                moe.feature_experts and moe.feature_top_k > moe.feature_experts):
            problems.append(f"need 0 ≤ moe.feature_top_k ≤ moe.feature_experts (got {moe.feature_top_k}, "
                            f"{moe.feature_experts})")
        if not set(moe.towers) <= set(TOWERS) or len(set(moe.towers)) != len(moe.towers):
            problems.append(f"moe.towers must be distinct names out of {', '.join(TOWERS)} (got {moe.towers!r})")
        if problems:
            raise SettingsError("fairmoe settings: " + "; ".join(problems))


@register_method("fairmoe", description="Fair-MoE: FO-MoE in both encoders + FOL (variance gaps + Sinkhorn) (Table 1)")
class FairMoE(FairCLIP):
    """Fair-MoE: CLIP with embedding- and feature-based MoE layers, trained with FairCLIP's loss plus FOL.

    FairCLIP's group batches, group batch size, Sinkhorn term and its spread monitor come from `FairCLIP`."""

    Settings = FairMoESettings

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moe = self.settings.moe.resolved()
        self.fol = self.settings.fol.resolved(self.settings.moe.form)

    @classmethod
    def check_arch(cls, arch: Any) -> None:
        """FO-MoE swaps the MLP of the last block of OpenAI-layout towers (`c_fc`/`c_proj` under
        `transformer.resblocks`); other tower families have no such swap point here: a BERT-style HF text tower
        splits its MLP over `intermediate` and `output` (with the residual and LayerNorm inside the latter), and a
        timm image tower's blocks live under `visual.trunk`. Refused at planning, naming the tower."""
        if getattr(arch, "family", "openai") != "openai":
            tower = {"hf-text": "a Hugging Face (BERT-style) text tower (BiomedCLIP: also a timm image tower)",
                     "open_clip-text": "open_clip's CustomTextCLIP text tower (under `text.`)"}.get(arch.family,
                                                                                                   arch.family)
            raise SettingsError(f"method {cls.name!r} cannot use arch {arch.name!r}: it has {tower}, and FO-MoE swaps "
                                "only OpenAI-layout transformer MLPs (c_fc/c_proj); use an arch like tiny, b16 or l14")

    def build(self, model: nn.Module) -> nn.Module:
        return build_fair_moe(model, self.settings.moe, n_groups=self.n_groups)

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """Every parameter that requires a gradient, except the image feature MoE's where the form keeps it at its
        initialisation: the released optimiser never holds it (FairMoEfinetune.py line 215, commented out)."""
        frozen = set()
        if self.moe.freeze_image_feature and getattr(model, "image_head", None) is not None:
            frozen = {id(p) for p in model.image_head.parameters()}
        return (p for p in model.parameters() if p.requires_grad and id(p) not in frozen)

    def probe_parameters(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """The gates of every MoE layer, where FOL acts: the gradient probe reports each term's share there."""
        return {"gates": [p for layer in moe_layers(model).values() for p in layer.gate.parameters()]}

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        s = self.settings
        # One encoding per batch serves the contrastive loss, L_distance and FOL: the MoE layers record their
        # gate weights for the main batch, then for the group batches in dict order (one call, or one per group:
        # FOL reads them joined either way), matching `codes` below.
        with record_routing(model) as records:
            features = encode_batch(model, batch)
            group_features = encode_groups(model, group_batches, s.form)
        terms = self.fairclip_terms(model, batch, group_batches, features, group_features)
        codes = [_codes(batch, -1)] + [_codes(gb, g) for g, gb in group_batches.items()]
        fol = self.fol
        terms.update(fol_terms(records, codes, self.n_groups, fol.weights(), form=fol.form,
                               released_lambda=fol.released_lambda, unbiased=fol.unbiased,
                               group_sample=fol.group_sample))
        return terms

    def step_stats(self, model: nn.Module) -> dict[str, float]:
        return {**routing_stats(model), **super().step_stats(model)}


def _codes(batch: Batch, fallback: int) -> torch.Tensor:
    if batch.groups is not None:
        return batch.groups.long()
    return torch.full((batch.labels.shape[0],), fallback, dtype=torch.long, device=batch.labels.device)


def register_variant(name: str, description: str, **defaults: Any) -> type[FairMoE]:
    """Register `name` as Fair-MoE whose Settings defaults differ from `fairmoe`'s only in `defaults`.

    `defaults` replaces whole fields, groups included (`fol=FOLConfig(ei=0.0)`); `--set` still changes any leaf.
    """
    unknown = set(defaults) - {f.name for f in dataclasses.fields(FairMoESettings)}
    if unknown:
        raise TypeError(f"register_variant({name!r}): FairMoESettings has no field {', '.join(sorted(unknown))}")
    cls_name = "".join(part.capitalize() for part in name.split("-"))
    fields = [(key, type(value), _default(value)) for key, value in defaults.items()]
    settings = dataclasses.make_dataclass(f"{cls_name}Settings", fields, bases=(FairMoESettings,))
    settings.__module__ = __name__
    cls = type(cls_name, (FairMoE,), {"Settings": settings, "__doc__": description, "__module__": __name__})
    return register_method(name, description=description)(cls)


def _default(value: Any) -> dataclasses.Field:
    """A field default; a dataclass instance becomes a factory of copies, so no two Settings share one group."""
    if dataclasses.is_dataclass(value):
        return field(default_factory=functools.partial(dataclasses.replace, value))
    return field(default=value)


NO_FOL = FOLConfig(ei=0.0, et=0.0, fi=0.0, ft=0.0)

# The paper's ablations (Tables 2–6): one line each.
register_variant("fairclip-fom", "FairCLIP with FO-MoE: FairCLIP's loss on the Fair-MoE model, no FOL variance "
                 "terms (Table 2)", fol=NO_FOL)
register_variant("fairmoe-no-fol", "Fair-MoE without FOL's variance terms; same model as fairclip-fom (Table 3)",
                 fol=NO_FOL)
register_variant("fairmoe-no-fei", "Fair-MoE without F_EI, the image embedding-MoE FOL term (Table 4)",
                 fol=FOLConfig(ei=0.0))
register_variant("fairmoe-no-fet", "Fair-MoE without F_ET, the text embedding-MoE FOL term (Table 4)",
                 fol=FOLConfig(et=0.0))
register_variant("fairmoe-no-ffi", "Fair-MoE without F_FI, the image feature-MoE FOL term (Table 4)",
                 fol=FOLConfig(fi=0.0))
register_variant("fairmoe-no-fft", "Fair-MoE without F_FT, the text feature-MoE FOL term (Table 4)",
                 fol=FOLConfig(ft=0.0))
register_variant("fairmoe-no-em", "Fair-MoE without the embedding-based MoE (Table 5)",
                 moe=MoEConfig(embedding_moe=False))
register_variant("fairmoe-no-fm", "Fair-MoE without the feature-based MoE (Table 5)", moe=MoEConfig(feature_moe=False))
register_variant("fairmoe-no-text-moe", "Fair-MoE with FO-MoE and FOL removed from the text encoder (Table 6)",
                 moe=MoEConfig(towers=("image",)))
register_variant("fairmoe-no-image-moe", "Fair-MoE with FO-MoE and FOL removed from the image encoder (Table 6)",
                 moe=MoEConfig(towers=("text",)))
