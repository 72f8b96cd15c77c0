"""Loss terms shared by methods: CLIP's contrastive loss and the Sinkhorn distance FairCLIP uses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fairbench.precision import fp32_island


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of paired, L2-normalised features."""
    logits = logit_scale * image_features @ text_features.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@fp32_island(always=True)
def sinkhorn_distance(x: torch.Tensor, y: torch.Tensor, blur: float = 1e-4, p: int = 2,
                      scaling: float = 0.5, debias: bool = True, max_iter: int = 200) -> torch.Tensor:
    """Entropic OT between uniform point clouds x (N, D) and y (M, D), as geomloss's
    `SamplesLoss("sinkhorn", p=p, blur=blur, scaling=scaling, debias=debias)`.

    Cost C = |x−y|^p / p, temperature ε = blur^p, solved in the log domain with ε-scaling (annealing
    from the data diameter down to blur) and the symmetric updates geomloss uses; with `debias` the
    Sinkhorn divergence S(x,y) − (S(x,x)+S(y,y))/2 is returned. Runs outside autocast in fp32 (fp64 inputs stay
    fp64): costs and log-domain updates in bf16 change the loss by up to a third and its gradient's direction.
    """
    if x.dim() == 1:
        x = x[:, None]
    if y.dim() == 1:
        y = y[:, None]
    y = y.to(x.dtype)
    eps_list = _epsilon_schedule(x, y, blur, p, scaling)
    a_log = torch.full((x.shape[0],), -math.log(x.shape[0]), device=x.device, dtype=x.dtype)
    b_log = torch.full((y.shape[0],), -math.log(y.shape[0]), device=y.device, dtype=x.dtype)
    # Each potential carries the gradient w.r.t. its own cloud only (envelope theorem): the cost seen
    # by f detaches y and the cost seen by g detaches x, else the cross term counts twice.
    c_xy = _cost(x, y.detach(), p)
    c_yx = _cost(y, x.detach(), p)
    if not debias:
        f, g = _sinkhorn_loop(a_log, b_log, c_xy, c_yx, None, None, eps_list, max_iter)
        return (a_log.exp() * f).sum() + (b_log.exp() * g).sum()
    # Likewise the self-costs detach their second argument.
    c_xx = _cost(x, x.detach(), p)
    c_yy = _cost(y, y.detach(), p)
    f, g, f_aa, g_bb = _sinkhorn_loop(a_log, b_log, c_xy, c_yx, c_xx, c_yy, eps_list, max_iter)
    return (a_log.exp() * (f - f_aa)).sum() + (b_log.exp() * (g - g_bb)).sum()


def _cost(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    if p == 2:
        d2 = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2 * x @ y.t()
        return d2.clamp_min(0) / 2
    return torch.cdist(x, y).pow(p) / p


def _epsilon_schedule(x: torch.Tensor, y: torch.Tensor, blur: float, p: int, scaling: float) -> list[float]:
    with torch.no_grad():
        pts = torch.cat([x, y])
        diameter = (pts.max(0).values - pts.min(0).values).norm().item()
    diameter = max(diameter, blur)
    schedule = [diameter**p]
    schedule += [math.exp(e) for e in _arange(p * math.log(diameter), p * math.log(blur), p * math.log(scaling))]
    schedule += [blur**p]
    return schedule


def _arange(start: float, stop: float, step: float) -> list[float]:
    out = []
    v = start
    while v > stop:
        out.append(v)
        v += step
    return out


def _softmin(eps: float, cost: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """−ε log Σ_j exp(h_j − C_ij / ε), row-wise."""
    return -eps * torch.logsumexp(h[None, :] - cost / eps, dim=1)


def _sinkhorn_loop(a_log, b_log, c_xy, c_yx, c_xx, c_yy, eps_list, max_iter):
    """Symmetric log-domain Sinkhorn with ε-scaling; last step extrapolates with gradients attached."""
    debias = c_xx is not None
    eps = eps_list[0]
    with torch.no_grad():
        g = _softmin(eps, c_yx, a_log)
        f = _softmin(eps, c_xy, b_log)
        if debias:
            f_aa = _softmin(eps, c_xx, a_log)
            g_bb = _softmin(eps, c_yy, b_log)
        for eps in eps_list[:max_iter]:
            ft = _softmin(eps, c_xy, b_log + g / eps)
            gt = _softmin(eps, c_yx, a_log + f / eps)
            f, g = 0.5 * (f + ft), 0.5 * (g + gt)
            if debias:
                f_aa = 0.5 * (f_aa + _softmin(eps, c_xx, a_log + f_aa / eps))
                g_bb = 0.5 * (g_bb + _softmin(eps, c_yy, b_log + g_bb / eps))
    eps = eps_list[-1]
    # One last extrapolation outside no_grad so the potentials carry gradients w.r.t. x and y
    # (the envelope theorem makes this the exact gradient at convergence).
    f, g = (_softmin(eps, c_xy, b_log + g.detach() / eps), _softmin(eps, c_yx, a_log + f.detach() / eps))
    if debias:
        f_aa = _softmin(eps, c_xx, a_log + f_aa.detach() / eps)
        g_bb = _softmin(eps, c_yy, b_log + g_bb.detach() / eps)
        return f, g, f_aa, g_bb
    return f, g
