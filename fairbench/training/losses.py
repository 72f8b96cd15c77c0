"""Loss terms shared by methods: CLIP's contrastive loss and the Sinkhorn distance FairCLIP uses."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fairbench.training.precision import fp32_island


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of paired, L2-normalised features."""
    logits = logit_scale * image_features @ text_features.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def clip_contrastive_per_sample(image_features: torch.Tensor, text_features: torch.Tensor,
                                logit_scale: torch.Tensor) -> torch.Tensor:
    """Each pair's share of the symmetric InfoNCE loss, (B,): ½ (image→text CE of row i + text→image CE of row i).
    Its mean is `clip_contrastive_loss`; weighting or grouping it is how the reweighting and GroupDRO baselines act."""
    logits = logit_scale * image_features @ text_features.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target, reduction="none")
                  + F.cross_entropy(logits.t(), target, reduction="none"))


@fp32_island(always=True)
def sinkhorn_distance(x: torch.Tensor, y: torch.Tensor, blur: float = 1e-4, p: int = 2, scaling: float = 0.5,
                      debias: bool = True, max_iter: int = 200, *, max_diameter: float | None = None,
                      over_bound: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Entropic OT between uniform point clouds x (N, D) and y (M, D), as geomloss's
    `SamplesLoss("sinkhorn", p=p, blur=blur, scaling=scaling, debias=debias)`.

    Cost C = |x−y|^p / p, temperature ε = blur^p, solved in the log domain with ε-scaling (annealing
    from the data diameter down to blur) and the symmetric updates geomloss uses; with `debias` the
    Sinkhorn divergence S(x,y) − (S(x,x)+S(y,y))/2 is returned. Runs outside autocast in fp32 (fp64 inputs stay
    fp64): costs and log-domain updates in bf16 change the loss by up to a third and its gradient's direction.

    Batched pairs x (G, N, D), y (G, M, D) give the G distances (G,), each pair with its own schedule, i.e. what
    G separate calls give, in one loop (unlike geomloss's batch mode, whose one diameter covers all pairs).

    `max_diameter`, an upper bound on `cloud_diameter(x, y)` known without looking at the data, makes the call
    free of host reads (no device sync, no torch.compile graph break): the schedule then has the fixed length
    `annealing_length(max_diameter, ...)` and the steps a smaller diameter does not need are masked out, so the
    result still equals geomloss's. A diameter above the bound anneals from the bound instead, i.e. equals
    geomloss with `diameter=max_diameter`; `over_bound`, if given, receives `cloud_diameter(x, y) > max_diameter`
    (a bool tensor on the device, 0-dim or (G,)) so a caller can count those calls and report them later without
    computing the diameter again. Without a bound the diameter is read once per call (one host sync).
    """
    batched = x.dim() == 3
    if x.dim() == 1:
        x = x[:, None]
    if y.dim() == 1:
        y = y[:, None]
    if not batched:
        x, y = x[None], y[None]
    y = y.to(x.dtype)
    with torch.no_grad():
        diameter = cloud_diameter(x, y)
    if max_diameter is None:
        max_diameter = float(diameter.max())  # the one host read of the unbounded form
    elif over_bound is not None:
        over_bound(diameter > max_diameter if batched else diameter[0] > max_diameter)
    length = annealing_length(max_diameter, blur, p, scaling)
    eps0, eps_steps, active = annealing_schedule(diameter.clamp(max=max_diameter), blur, p, scaling, length,
                                                 max_iter, dtype=x.dtype)
    a_log = torch.full(x.shape[:2], -math.log(x.shape[1]), device=x.device, dtype=x.dtype)
    b_log = torch.full(y.shape[:2], -math.log(y.shape[1]), device=y.device, dtype=x.dtype)
    # Each potential carries the gradient w.r.t. its own cloud only (envelope theorem): the cost seen
    # by f detaches y and the cost seen by g detaches x, else the cross term counts twice.
    c_xy = _cost(x, y.detach(), p)
    c_yx = _cost(y, x.detach(), p)
    schedule = (eps0, eps_steps, active, blur**p)
    if not debias:
        f, g = _sinkhorn_loop(a_log, b_log, c_xy, c_yx, None, None, schedule)
        out = (a_log.exp() * f).sum(-1) + (b_log.exp() * g).sum(-1)
    else:
        # Likewise the self-costs detach their second argument.
        c_xx = _cost(x, x.detach(), p)
        c_yy = _cost(y, y.detach(), p)
        f, g, f_aa, g_bb = _sinkhorn_loop(a_log, b_log, c_xy, c_yx, c_xx, c_yy, schedule)
        out = (a_log.exp() * (f - f_aa)).sum(-1) + (b_log.exp() * (g - g_bb)).sum(-1)
    return out if batched else out[0]


def cloud_diameter(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """geomloss's diameter estimate, on the device: the diagonal of the box bounding both clouds (N, D), (M, D)
    (0-dim), or of each pair of a batch (G, N, D), (G, M, D) → (G,)."""
    pts = torch.cat([x, y], dim=-2)
    return (pts.amax(-2) - pts.amin(-2)).norm(dim=-1)


def annealing_length(max_diameter: float, blur: float, p: int, scaling: float) -> int:
    """How many ε values geomloss's schedule has for a diameter up to `max_diameter`: diameter^p, then
    exp(p·log diameter + k·p·log scaling) while above blur^p (numpy's `arange` count), then blur^p."""
    if not math.isfinite(max_diameter) or max_diameter <= blur:
        return 2
    steps = math.ceil((p * math.log(blur) - p * math.log(max_diameter)) / (p * math.log(scaling)))
    return max(steps, 0) + 2


def annealing_schedule(diameter: torch.Tensor, blur: float, p: int, scaling: float, length: int,
                       max_iter: int = 200, *, dtype: torch.dtype | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """geomloss's ε schedule for device-side diameters (...,), built on the device for diameters up to the bound
    `length = annealing_length(bound, ...)` was made for.

    Returns (ε₀ for the initial potentials (...,), ε per loop step (..., K), which steps run (..., K) bool),
    K = min(length, max_iter). The schedule's first `max_iter` values fill the last steps, so the real steps run
    in order and end the loop; the leading steps a smaller diameter does not need are masked out. Values follow
    geomloss (`epsilon_schedule`, numpy's arange: start, start + step, then start + k·(second − start)) in
    float64. A diameter of 0 (or one whose ε underflows), where geomloss divides 0 by 0, anneals from blur.
    """
    dtype = dtype or diameter.dtype
    d = diameter.detach().double()[..., None]
    floor = torch.finfo(dtype).tiny ** (1 / p)
    d = torch.where(d > floor, d, torch.full_like(d, blur))
    start = p * torch.log(d)
    stop, step = p * math.log(blur), p * math.log(scaling)
    # numpy's arange length; ≤ length − 2 whenever diameter ≤ the bound `length` was made for (clamped for the
    # last-bit disagreements of the host's and the device's log right at a step boundary).
    n = torch.nan_to_num(torch.ceil((stop - start) / step), nan=0.0).clamp(0, max(length - 2, 0)).long()
    second = start + step
    k = torch.arange(max(length - 2, 0), device=d.device, dtype=torch.float64)
    values = torch.where(k == 0, start, torch.where(k == 1, second, start + k * (second - start)))
    # The full schedule, indexed by its own position r: d^p, exp(values[:n]), blur^p, unused beyond.
    tail = torch.full((*d.shape[:-1], 2), blur**p, dtype=torch.float64, device=d.device)
    full = torch.cat([d**p, values.exp(), tail], dim=-1)
    r_full = torch.arange(full.shape[-1], device=d.device)
    full = torch.where(r_full <= n, full, blur**p)  # position n + 1 (and the unused tail) is blur^p
    runs = torch.clamp(n + 2, max=max_iter)  # geomloss runs at most max_iter of its steps
    steps = min(length, max_iter)
    r = torch.arange(steps, device=d.device) - (steps - runs)
    active = r >= 0
    eps_steps = full.gather(-1, r.clamp(min=0))
    return full[..., 0].to(dtype), eps_steps.to(dtype), active


def _cost(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """(G, N, D), (G, M, D) → (G, N, M) costs |x−y|^p / p."""
    if p == 2:
        d2 = (x * x).sum(-1)[..., :, None] + (y * y).sum(-1)[..., None, :] - 2 * x @ y.transpose(-1, -2)
        return d2.clamp_min(0) / 2
    return torch.cdist(x, y).pow(p) / p


def _softmin(eps: float | torch.Tensor, cost: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """−ε log Σ_j exp(h_j − C_ij / ε), row-wise, for costs (G, N, M), h (G, M) and ε a float or one per pair (G,)."""
    if isinstance(eps, torch.Tensor):
        return -eps[:, None] * torch.logsumexp(h[:, None, :] - cost / eps[:, None, None], dim=2)
    return -eps * torch.logsumexp(h[:, None, :] - cost / eps, dim=2)


def _sinkhorn_loop(a_log, b_log, c_xy, c_yx, c_xx, c_yy, schedule):
    """Symmetric log-domain Sinkhorn with ε-scaling; last step extrapolates with gradients attached.

    `schedule` is (ε₀ (G,), ε per step (G, K), which steps run (G, K), final ε) from `annealing_schedule`; a
    masked step leaves the potentials as they are, so the loop has a fixed length and never reads the device.
    """
    debias = c_xx is not None
    eps0, eps_steps, active, eps_last = schedule
    with torch.no_grad():
        g = _softmin(eps0, c_yx, a_log)
        f = _softmin(eps0, c_xy, b_log)
        if debias:
            f_aa = _softmin(eps0, c_xx, a_log)
            g_bb = _softmin(eps0, c_yy, b_log)
        for eps, on in zip(eps_steps.unbind(-1), active[..., None].unbind(-2), strict=True):
            e = eps[:, None]
            ft = _softmin(eps, c_xy, b_log + g / e)
            gt = _softmin(eps, c_yx, a_log + f / e)
            f, g = torch.where(on, 0.5 * (f + ft), f), torch.where(on, 0.5 * (g + gt), g)
            if debias:
                f_aa = torch.where(on, 0.5 * (f_aa + _softmin(eps, c_xx, a_log + f_aa / e)), f_aa)
                g_bb = torch.where(on, 0.5 * (g_bb + _softmin(eps, c_yy, b_log + g_bb / e)), g_bb)
    eps = eps_last
    # One last extrapolation outside no_grad so the potentials carry gradients w.r.t. x and y
    # (the envelope theorem makes this the exact gradient at convergence).
    f, g = (_softmin(eps, c_xy, b_log + g.detach() / eps), _softmin(eps, c_yx, a_log + f.detach() / eps))
    if debias:
        f_aa = _softmin(eps, c_xx, a_log + f_aa.detach() / eps)
        g_bb = _softmin(eps, c_yy, b_log + g_bb.detach() / eps)
        return f, g, f_aa, g_bb
    return f, g
