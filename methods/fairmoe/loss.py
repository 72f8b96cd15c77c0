"""Fair-MoE's Fairness-Oriented Loss (Wang et al., Section 3.2): FOL = F_EI + F_ET + F_FI + F_FT + L_distance.

For one MoE layer, each expert's gate weight is a random variable. "All sampled data" is the step's main batch
(a uniform sample of the training set). For an embedding MoE every token of a sample that takes part is one draw
(text padding excluded, except under the release's routing, where every position competes); for a feature MoE every
sample is one draw. A group with no draws adds nothing; unknown groups (−1) join no group term.

* "paper":    F = Σ_p Σ_j (Var(O_N)_j − Var(O_N|p)_j)² — the paper, §3.2, the formula of F_EI. O_N|p is the gate
  weights of the N pairs drawn from group p (the step's extra batch of group p), literally; `group_sample="pooled"`
  adds the main batch's members of group p to it (fairbench v0.2's reading). The paper does not say which variance
  estimator; this harness takes the population variance (÷ n).
* "released": F = λ · [Σ_p (s_p − s)² − s], s = mean_j Var(main batch)_j, s_p = mean_j Var(group p's batch)_j, with
  the unbiased variance (÷ n − 1): the released code's FOL (FairMoEfinetune.py lines 330–339 and 358–367: `var`
  over `view(-1, NumExp)`, averaged over experts, subtracted once with `lambda_fairmoeloss` and added per group as
  `lambda_fairmoeloss * (LoadScore - LoadList[index]) ** 2`). The group side has no gradient there (its forward runs
  under `torch.no_grad`), as here whenever the group batches are encoded without gradients (FairCLIP's published
  form). The release hooks only the text side (lines 139–148: the image hooks are commented out) and reads the
  feature gate's softmax output (`moetext.softmax`, line 143), so its weights are F_ET = F_FT = 1e-4 (the argparse
  default of `--lambda_fairmoeloss`, line 60) and F_EI = F_FI = 0; `released_lambda` is the relative weight of its
  "− s" (1 in the release, which uses the same λ for both parts).

`FOLConfig` leaves every field at None to take its form's value (`FOL_FORMS`); its form follows Fair-MoE's
`moe.form` (`release` → "released", otherwise "paper") unless set, and `moe.form=v0.1` pools O_N|p as v0.1 did.
L_distance is FairCLIP's Sinkhorn term (`fairclip_distance` of the fairclip method module); the method adds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from fairbench.method import SettingsError, convert_value
from fairbench.training.precision import fp32, fp32_island, is_native

from .layers import GateRecord

FORMS = ("paper", "released")
GROUP_SAMPLES = ("drawn", "pooled")

# Which FOL term regularises which MoE layer (layer names from `layers.MoECLIP.moe_layers`).
LAYER_TERMS = {"image_embedding": "fol_ei", "text_embedding": "fol_et",
               "image_feature": "fol_fi", "text_feature": "fol_ft"}
# Each FOL form's value of every FOLConfig field left at None (see the module docstring).
FOL_FORMS: dict[str, dict[str, Any]] = {
    "paper": {"ei": 1.0, "et": 1.0, "fi": 1.0, "ft": 1.0, "unbiased": False, "group_sample": "drawn"},
    "released": {"ei": 0.0, "et": 1e-4, "fi": 0.0, "ft": 1e-4, "unbiased": True, "group_sample": "drawn"},
}
# The FOL form each Fair-MoE form (`moe.form`) implies when `fol.form` is not set, and what a Fair-MoE form changes
# on top of it: v0.1 (kept to compare with runs made under it) pooled the batch's members of p into O_N|p.
FORM_OF_MOE = {"paper": "paper", "release": "released", "v0.1": "paper"}
MOE_FORM_FOL: dict[str, dict[str, Any]] = {"v0.1": {"group_sample": "pooled"}}


@dataclass
class FOLConfig:
    """FOL's weight per term (0 leaves the term out), its form and its statistics; None = the form's value."""

    ei: float | None = None  # F_EI, image embedding MoE
    et: float | None = None  # F_ET, text embedding MoE
    fi: float | None = None  # F_FI, image feature MoE
    ft: float | None = None  # F_FT, text feature MoE
    form: str | None = None  # paper | released; None = as moe.form (release → released, otherwise paper)
    released_lambda: float = 1.0  # relative weight of the released form's "− Var(batch)" (1 as released)
    unbiased: bool | None = None  # variance ÷ (n − 1) instead of ÷ n
    group_sample: str | None = None  # drawn: group p's extra batch only; pooled: plus the main batch's members of p

    def __post_init__(self) -> None:
        likes = FOL_FORMS["paper"]
        for name, like in likes.items():  # `--set` strings for fields whose default is None
            value = getattr(self, name)
            if isinstance(value, str) and not isinstance(like, str):
                setattr(self, name, convert_value(value, like, f"setting 'fol.{name}'"))
        if self.form is not None and self.form not in FORMS:
            raise SettingsError(f"fol.form must be one of {', '.join(FORMS)} (got {self.form!r})")
        if self.group_sample is not None and self.group_sample not in GROUP_SAMPLES:
            raise SettingsError(f"fol.group_sample must be one of {', '.join(GROUP_SAMPLES)} "
                                f"(got {self.group_sample!r})")

    def resolved(self, moe_form: str = "paper") -> FOLConfig:
        """This config with its form taken from `moe_form` when unset and every other unset field from the form."""
        form = self.form or FORM_OF_MOE.get(moe_form, "paper")
        values = {**FOL_FORMS[form], **MOE_FORM_FOL.get(moe_form, {})}
        unset = {name: value for name, value in values.items() if getattr(self, name) is None}
        return dataclasses.replace(self, form=form, **unset)

    def weights(self) -> dict[str, float]:
        """The weights keyed by loss-term name, as `fol_terms` takes them (call on a resolved config)."""
        return {term: float(getattr(self, term.removeprefix("fol_"))) for term in LAYER_TERMS.values()}


@fp32_island
def group_variances(weights: torch.Tensor, groups: torch.Tensor, n_groups: int, *, valid: torch.Tensor | None = None,
                    population: torch.Tensor | None = None, unbiased: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert variance of gate weights over the population and over each group.

    weights (S, M) or (S, T, M); groups (S,) codes (−1 unknown, or not part of any group's sample); valid (S, T)
    token mask; population (S,) bool (default: every sample). Returns (var (1 + P, M), draws (1 + P,)); row 0 is the
    population. The variance divides by n (population) or, `unbiased`, by n − 1 (a single draw then gives 0). The
    moments are computed in fp32 (fp64 inputs in fp64) outside autocast (in bf16 the einsums move the F terms by
    ~3 %).
    """
    w = fp32(weights)  # half precision up to fp32; fp32 and fp64 as they are
    if w.dim() == 2:
        w = w[:, None, :]
    S, T, _ = w.shape
    rows = torch.ones(S, T, device=w.device, dtype=w.dtype) if valid is None else valid.to(w.dtype)
    if population is None:
        population = torch.ones(S, dtype=torch.bool, device=w.device)
    codes = torch.arange(n_groups, device=w.device)
    members = torch.cat([population[None], groups.to(w.device)[None, :] == codes[:, None]]).to(w.dtype)  # (1+P, S)
    draws = members[:, :, None] * rows[None]  # (1+P, S, T)
    n = draws.sum((1, 2))
    mean = torch.einsum("kst,stm->km", draws, w) / n.clamp_min(1)[:, None]
    squares = torch.einsum("kst,kstm->km", draws, (w[None] - mean[:, None, None, :]) ** 2)
    return squares / (n - 1 if unbiased else n).clamp_min(1)[:, None], n


def variance_gap(weights: torch.Tensor, groups: torch.Tensor, n_groups: int, *, valid: torch.Tensor | None = None,
                 population: torch.Tensor | None = None, form: str = "paper", released_lambda: float = 1.0,
                 unbiased: bool = False) -> torch.Tensor:
    """One F_* term of FOL for one MoE layer's gate weights (see the module docstring for the forms).

    Under the `fairclip` protocol's native numerics the variances are rounded to the gate weights' precision and the
    rest is computed in it, as the released fp16 model computes `var()` and its squares in fp16."""
    if form not in FORMS:
        raise ValueError(f"FOL form must be one of {', '.join(FORMS)}, got {form!r}")
    var, n = group_variances(weights, groups, n_groups, valid=valid, population=population, unbiased=unbiased)
    if is_native() and weights.is_floating_point():
        var = var.to(weights.dtype)
    present = (n[1:] > 0).to(var.dtype)
    if form == "paper":
        return (((var[0][None] - var[1:]) ** 2).sum(-1) * present).sum()
    spread = var.mean(-1)
    return (((spread[0] - spread[1:]) ** 2) * present).sum() - released_lambda * spread[0]


def fol_terms(records: dict[str, list[GateRecord]], groups: list[torch.Tensor], n_groups: int,
              weights: dict[str, float], *, form: str = "paper", released_lambda: float = 1.0,
              unbiased: bool = False, group_sample: str = "drawn") -> dict[str, torch.Tensor]:
    """Weighted F_EI/F_ET/F_FI/F_FT from recorded gate weights.

    `records[layer]` holds the gate weights of the encoded batches in the order of `groups` (one codes tensor per
    batch); the first batch, the population ("all sampled data"), is a record of its own, while the later ones (one
    per group) may come one record each or joined into fewer (group batches encoded in one forward). Group p's
    sample is its own batch (`group_sample="drawn"`) or that plus the population's members of p ("pooled"). Terms
    with weight 0 are left out.
    """
    if group_sample not in GROUP_SAMPLES:
        raise ValueError(f"FOL group sample must be one of {', '.join(GROUP_SAMPLES)}, got {group_sample!r}")
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
        main = groups[0].shape[0]
        population_codes = groups[0] if group_sample == "pooled" else torch.full_like(groups[0], -1)
        codes = torch.cat([population_codes, *groups[1:]]).to(w.device)
        population = torch.zeros(codes.shape[0], dtype=torch.bool, device=w.device)
        population[:main] = True
        out[term] = weights[term] * variance_gap(w, codes, n_groups, valid=valid, population=population, form=form,
                                                 released_lambda=released_lambda, unbiased=unbiased)
    return out
