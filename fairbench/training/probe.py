"""Which loss terms can move the model: each named term's gradient norm on the parameters it reaches, per epoch.

A method's loss is a weighted sum of named terms, and the history's loss columns say how large each term is, not
whether it can change what the model learns. A term whose gradient is a ten-thousandth of the others' cannot, however
its value reads in an ablation table: FOL's variance terms reach Fair-MoE's gates with about 1e-6 of the gradient
the contrastive and Sinkhorn terms bring at the released weights, and FairCLIP's published Sinkhorn term dwarfs the
contrastive one. So once per epoch the trainer measures, on the batch the epoch trains on first, before it trains,
‖∂term/∂θ‖ for every term over all trainable parameters and over each parameter set the method names
(`Method.probe_parameters`, e.g. Fair-MoE's gates), and each term's share of the sum of those norms.

The measurement changes no number of the training: it runs in eval mode (no dropout draw, no routing statistics),
restores every random generator afterwards, takes its gradients with `torch.autograd.grad` (no `.grad` is touched,
no optimiser sees them) and reads the device once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the display formats probe records without importing torch
    import torch
    from torch import nn

ALL = "all"  # the set of every trainable parameter
INERT_SHARE = 1e-4  # a term below this share of the gradient on every set it reaches cannot matter


def gradient_norms(terms: dict[str, torch.Tensor], sets: dict[str, list[nn.Parameter]]) -> dict[str, dict[str, float]]:
    """{term: {set: ‖∂term/∂θ_set‖}} for scalar `terms` sharing one graph, in one read of the device.

    A parameter a term does not reach contributes 0; a term without a gradient (a constant) has norm 0 everywhere.
    """
    import torch

    params = list({id(p): p for members in sets.values() for p in members}.values())
    index = {id(p): i for i, p in enumerate(params)}
    device = params[0].device if params else torch.device("cpu")
    members = {name: torch.tensor([index[id(p)] for p in ps], dtype=torch.long, device=device)
               for name, ps in sets.items()}
    rows = []
    names = list(terms)
    for k, name in enumerate(names):  # a handful of terms
        term = terms[name]
        squares = torch.zeros(len(params), dtype=torch.float32, device=device)
        if term.requires_grad and params:
            grads = torch.autograd.grad(term.float(), params, retain_graph=k + 1 < len(names), allow_unused=True)
            reached = [i for i, g in enumerate(grads) if g is not None]
            if reached:
                norms = torch._foreach_norm([grads[i].float() for i in reached])
                squares[torch.tensor(reached, device=device)] = torch.stack(norms) ** 2
        rows.append(torch.stack([squares[m].sum().sqrt() for m in members.values()]))
    if not rows:
        return {}
    values = torch.stack(rows).tolist()  # the one host read
    return {name: dict(zip(members, row, strict=True)) for name, row in zip(names, values, strict=True)}


def gradient_shares(norms: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each term's norm over the sum of all terms' norms on the same set (0 where no term reaches the set)."""
    sets = {s for per_set in norms.values() for s in per_set}
    totals = {s: sum(per_set.get(s, 0.0) for per_set in norms.values()) for s in sets}
    return {term: {s: (v / totals[s] if totals[s] > 0 else 0.0) for s, v in per_set.items()}
            for term, per_set in norms.items()}


def probe_record(norms: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The history fields of one probe: per-term gradient norms and shares per parameter set."""
    return {"grad_norms": norms, "grad_shares": gradient_shares(norms)}


def _describe(parameter_set: str) -> str:
    return "all trainable parameters" if parameter_set == ALL else f"the {parameter_set}"


def strongest(shares: dict[str, float]) -> tuple[str, float]:
    """The set on which a term's share is largest, and that share."""
    best = max(shares, key=lambda s: (shares[s], s == ALL))
    return best, shares[best]


def inert_warnings(history: list[dict[str, Any]]) -> list[str]:
    """One line per term whose share of the gradient is below INERT_SHARE on every set it was measured on, at the
    first epoch where that happened (read from the history, so a resumed run words it the same)."""
    out, seen = [], set()
    for record in history:
        for term, shares in (record.get("grad_shares") or {}).items():
            if term in seen or not shares:
                continue
            where, share = strongest(shares)
            if share < INERT_SHARE and len(record["grad_shares"]) > 1:
                seen.add(term)
                out.append(f"{term} reaches {_describe(where)} with {share:.1g} of the gradient at epoch "
                           f"{record['epoch'] + 1}: inert at these settings")
    return out


def format_shares(record: dict[str, Any]) -> str:
    """'grad share contrastive 0.41, sinkhorn 0.59, fol_ei 2e-07 (gates 3e-05)' for an epoch line ('' without)."""
    shares = record.get("grad_shares") or {}
    if not shares:
        return ""
    parts = []
    for term, per_set in shares.items():
        text = f"{term} {_short(per_set.get(ALL, math.nan))}"
        others = [f"{s} {_short(v)}" for s, v in per_set.items() if s != ALL]
        parts.append(text + (f" ({', '.join(others)})" if others else ""))
    return "grad share " + ", ".join(parts)


def _short(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:.2f}" if value >= 0.01 else f"{value:.1g}"
