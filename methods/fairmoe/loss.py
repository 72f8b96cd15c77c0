"""Fair-MoE's Fairness-Oriented Loss (Wang et al., Section 3.2): FOL = F_EI + F_ET + F_FI + F_FT + L_distance.

For one MoE layer, each expert's gate weight is a random variable. "All sampled data" is the step's main batch
(a uniform sample of the training set); group p's sample is every sample of group p the step encoded (those of
the main batch plus group p's extra batch). For an embedding MoE every real token of a sample is one draw (text
padding excluded); for a feature MoE every sample is one draw. Variances are population variances (÷ n), so a
group with a single draw is defined; a group with none adds nothing; unknown groups (−1) join no group term.

* "paper":    F = Σ_p Σ_j (Var_all[j] − Var_p[j])²
* "released": F = Σ_p (mean_j Var_all[j] − mean_j Var_p[j])² − λ · mean_j Var_all[j]  (the released code's form:
  variances averaged over experts before squaring, minus λ times the batch's variance)

L_distance is FairCLIP's Sinkhorn term (`fairclip_distance` of the fairclip method module); it is added by the method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fairbench.training.precision import fp32_island

from .layers import GateRecord

FORMS = ("paper", "released")

# Which FOL term regularises which MoE layer (layer names from `layers.MoECLIP.moe_layers`).
LAYER_TERMS = {"image_embedding": "fol_ei", "text_embedding": "fol_et",
               "image_feature": "fol_fi", "text_feature": "fol_ft"}


@dataclass
class FOLConfig:
    """FOL's weight per term (0 leaves the term out) and its form (see the module docstring)."""

    ei: float = 1.0  # F_EI, image embedding MoE
    et: float = 1.0  # F_ET, text embedding MoE
    fi: float = 1.0  # F_FI, image feature MoE
    ft: float = 1.0  # F_FT, text feature MoE
    form: str = "paper"  # or "released"
    released_lambda: float = 1.0  # λ of the released form's "− λ·Var(batch)"; its released value is unknown

    def weights(self) -> dict[str, float]:
        """The weights keyed by loss-term name, as `fol_terms` takes them."""
        return {term: float(getattr(self, term.removeprefix("fol_"))) for term in LAYER_TERMS.values()}


@fp32_island
def group_variances(weights: torch.Tensor, groups: torch.Tensor, n_groups: int, *, valid: torch.Tensor | None = None,
                    population: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert population variance of gate weights over the population and over each group.

    weights (S, M) or (S, T, M); groups (S,) codes (−1 unknown); valid (S, T) token mask; population (S,) bool
    (default: every sample). Returns (var (1 + P, M), draws (1 + P,)); row 0 is the population. Runs in fp32
    outside autocast: in bf16 the einsums move the F terms by ~3 %.
    """
    w = weights.float()
    if w.dim() == 2:
        w = w[:, None, :]
    S, T, _ = w.shape
    rows = torch.ones(S, T, device=w.device) if valid is None else valid.float()
    if population is None:
        population = torch.ones(S, dtype=torch.bool, device=w.device)
    codes = torch.arange(n_groups, device=w.device)
    members = torch.cat([population[None], groups.to(w.device)[None, :] == codes[:, None]]).float()  # (1+P, S)
    draws = members[:, :, None] * rows[None]  # (1+P, S, T)
    n = draws.sum((1, 2))
    denom = n.clamp_min(1)[:, None]
    mean = torch.einsum("kst,stm->km", draws, w) / denom
    var = torch.einsum("kst,kstm->km", draws, (w[None] - mean[:, None, None, :]) ** 2) / denom
    return var, n


def variance_gap(weights: torch.Tensor, groups: torch.Tensor, n_groups: int, *, valid: torch.Tensor | None = None,
                 population: torch.Tensor | None = None, form: str = "paper",
                 released_lambda: float = 1.0) -> torch.Tensor:
    """One F_* term of FOL for one MoE layer's gate weights (see the module docstring for the forms)."""
    if form not in FORMS:
        raise ValueError(f"FOL form must be one of {', '.join(FORMS)}, got {form!r}")
    var, n = group_variances(weights, groups, n_groups, valid=valid, population=population)
    present = (n[1:] > 0).float()
    if form == "paper":
        return (((var[0][None] - var[1:]) ** 2).sum(-1) * present).sum()
    spread = var.mean(-1)
    return (((spread[0] - spread[1:]) ** 2) * present).sum() - released_lambda * spread[0]


def fol_terms(records: dict[str, list[GateRecord]], groups: list[torch.Tensor], n_groups: int,
              weights: dict[str, float], *, form: str = "paper",
              released_lambda: float = 1.0) -> dict[str, torch.Tensor]:
    """Weighted F_EI/F_ET/F_FI/F_FT from recorded gate weights.

    `records[layer]` holds the gate weights of the encoded batches in the order of `groups` (one codes tensor per
    batch); the first batch, the population ("all sampled data"), is a record of its own, while the later ones may
    come one record each or joined into fewer (group batches encoded in one forward). Terms with weight 0 are left
    out.
    """
    out: dict[str, torch.Tensor] = {}
    for layer, recs in records.items():  # ≤ 4 layers
        term = LAYER_TERMS.get(layer)
        if term is None or not weights.get(term):
            continue
        sizes = [r.weights.shape[0] for r in recs]
        wanted = [g.shape[0] for g in groups]
        if not sizes or sizes[0] != wanted[0] or sum(sizes) != sum(wanted):
            raise RuntimeError(f"FOL: layer {layer!r} saw batches of sizes {sizes} but {len(groups)} batches of sizes "
                               f"{wanted} were encoded; encode each batch exactly once while "
                               "recording")
        w = torch.cat([r.weights for r in recs])
        valid = torch.cat([r.valid for r in recs]) if recs[0].valid is not None else None
        codes = torch.cat([g.to(w.device) for g in groups])
        population = torch.zeros(codes.shape[0], dtype=torch.bool, device=w.device)
        population[: groups[0].shape[0]] = True
        out[term] = weights[term] * variance_gap(w, codes, n_groups, valid=valid, population=population, form=form,
                                                 released_lambda=released_lambda)
    return out
