"""Linear probe: a frozen image encoder and a linear classifier on its features, after FairCLIP's protocol.

Every choice copied from FairCLIP's linear probing (Harvard-Ophthalmology-AI-Lab/FairCLIP at 91b05b6,
`mae/main_linprobe.py` with `mae/engine_finetune.py`, run as the README's "Linear Probing" command, README.md
lines 82-93) and where it comes from:

* features: `encode_image` of the frozen model, the embedding after the image projection, not normalised
  (engine_finetune.py lines 88-89, 175-176); every model parameter frozen (main_linprobe.py lines 286-290);
* head: a per-feature standardisation (FairCLIP: `BatchNorm1d(affine=False, eps=1e-6)` before the Linear,
  main_linprobe.py lines 279-284) and `Linear(D, 2)` with weights from `trunc_normal_(std=0.01)` (same lines);
* loss: `BCEWithLogitsLoss` on logit column 1 only, probability `sigmoid(logit[:, 1])` (engine_finetune.py lines
  94, 181, 183);
* optimiser: LARS with momentum 0.9 and trust coefficient 0.001, no weight decay and no LARS scaling for ≤1-D
  parameters (main_linprobe.py line 315; mae/util/lars.py lines 14-47);
* learning rate `blr × batch / 256` with blr 0.1 and batch 512 (README.md line 92; main_linprobe.py lines 68-69,
  300-303), per-iteration linear warm-up over 10 epochs then a half-cycle cosine to min_lr 0 (mae/util/lr_sched.py
  lines 9-21, called per step at engine_finetune.py lines 60-61; main_linprobe.py lines 71-75);
* 1000 epochs (README.md line 92), shuffled batches of 512 without the last short one (main_linprobe.py lines
  191-197);
* selection: every 10 epochs, the epoch whose validation AUC is strictly higher than every earlier one
  (main_linprobe.py lines 345-359).

Where this departs from it, and why:

* features are extracted once with the evaluation transform and cached (fairbench.training.features), as issue 21
  asks; FairCLIP re-encodes augmented images (RandomResizedCrop, flip) at every step (main_linprobe.py line 152);
* the standardisation uses the whole training set's mean and variance, in training and evaluation alike; FairCLIP's
  BatchNorm uses each batch's statistics in training and their running average in evaluation;
* regularisation is chosen on validation: one head per weight decay in `weight_decays` (FairCLIP has only 0.0,
  README.md line 92, which stays in the grid), trained side by side, and the (weight decay, epoch) with the best
  validation AUC is kept; FairCLIP has no such search;
* the last epoch is always evaluated too (so a short run has one evaluation); a training split smaller than a batch
  is one batch per epoch (FairCLIP's drop_last would give none); the bias starts at 0.

`reweight` is the fairness-aware variant, one setting: `group` weights each training sample's loss by the inverse
frequency of its group of the training attribute, `group-label` by that of its (group, label) cell (weights
average 1; samples of an unknown group weigh 1). The probe is an attribute method (it runs once per training
attribute), so the plain and the reweighted probe share the protocol, the tables and the features' cache.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fairbench.method import Method, SettingsError
from fairbench.registry import register_method

REWEIGHTS = ("none", "group", "group-label")
BN_EPS = 1e-6  # main_linprobe.py line 280
INIT_STD = 0.01  # main_linprobe.py line 284
LARS_MOMENTUM = 0.9  # mae/util/lars.py
LARS_TRUST = 0.001  # mae/util/lars.py


@dataclass
class LinearProbeSettings:
    probe_epochs: int = 1000
    probe_batch_size: int = 512
    blr: float = 0.1
    warmup_epochs: int = 10
    min_lr: float = 0.0
    eval_every: int = 10
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
    reweight: str = "none"

    def __post_init__(self) -> None:
        problems = []
        if self.probe_epochs < 1 or self.probe_batch_size < 1 or self.eval_every < 1 or self.warmup_epochs < 0:
            problems.append("probe_epochs, probe_batch_size and eval_every must be ≥ 1 and warmup_epochs ≥ 0")
        if not (math.isfinite(self.blr) and self.blr > 0) or not (math.isfinite(self.min_lr) and self.min_lr >= 0):
            problems.append("blr must be > 0 and min_lr ≥ 0")
        if not self.weight_decays or any(not math.isfinite(w) or w < 0 for w in self.weight_decays):
            problems.append("weight_decays must list one or more finite numbers ≥ 0, e.g. 0,1e-4,1e-3")
        if self.reweight not in REWEIGHTS:
            problems.append(f"reweight must be one of {', '.join(REWEIGHTS)}")
        if problems:
            raise SettingsError(f"linear-probe settings: {'; '.join(problems)} (got {self})")


@register_method("linear-probe", description="linear probe: frozen image encoder + a linear classifier on its "
                 "features (FairCLIP's protocol; regularisation chosen on validation)")
class LinearProbe(Method):
    """Trains a linear head on cached frozen features; the model itself never changes."""

    mode = "linear-probe"
    uses_attribute = True
    Settings = LinearProbeSettings

    def check_training_labels(self, labels: np.ndarray) -> None:
        classes = np.unique(labels)
        if classes.size < 2:
            raise SettingsError(f"linear-probe: the training split has one class only (label {classes.tolist()}); "
                                "a classifier needs both classes in training")

    def fit(self, model: nn.Module, context):
        from fairbench.training.features import cached_features
        from fairbench.training.trainer import TrainOutcome

        self.check_training_labels(context.train.labels.numpy())
        model.to(context.device)
        t0 = time.perf_counter()
        feats = cached_features(model, {"train": context.train, "val": context.val, "test": context.test}, context)
        t1 = time.perf_counter()
        weights = sample_weights(context.train.labels, context.train.groups, self.settings.reweight)
        probe = fit_probe(feats["train"], context.train.labels, weights, feats["val"], context.val.labels.numpy(),
                          self.settings, context.seed, context.auc)
        val_scores = probe.scores(feats["val"])
        test_scores = probe.scores(feats["test"])
        return TrainOutcome(best_epoch=probe.epoch, val_scores=val_scores, test_scores=test_scores,
                            history=probe.history, train_seconds=time.perf_counter() - t1, eval_seconds=t1 - t0,
                            trainable_parameters=int(feats["train"].shape[1]) + 1,
                            details={"weight_decay": probe.weight_decay, "feature_dim": int(feats["train"].shape[1])})


def sample_weights(labels: torch.Tensor, groups: torch.Tensor | None, reweight: str) -> torch.Tensor:
    """Per-sample loss weights averaging 1: inverse frequency of the sample's group (or group × label cell)."""
    n = labels.shape[0]
    if reweight == "none":
        return torch.ones(n)
    if groups is None:
        raise SettingsError(f"linear-probe: reweight={reweight} needs a training attribute (--attr)")
    cell = groups.long() * 2 + labels.long() if reweight == "group-label" else groups.long()
    known = groups >= 0
    _, inverse, counts = torch.unique(cell[known], return_inverse=True, return_counts=True)
    weights = torch.ones(n)
    weights[known] = (known.sum() / (counts.numel() * counts[inverse])).float()
    return weights * n / weights.sum()


@dataclass
class FittedProbe:
    """The selected head: standardisation statistics, weight row 1 and bias 1 (the logit FairCLIP scores)."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    epoch: int
    weight_decay: float
    history: list[dict]

    def scores(self, features: torch.Tensor) -> np.ndarray:
        z = ((features - self.mean) / self.std) @ self.weight + self.bias
        return torch.sigmoid(z).double().numpy()


def lr_at(epoch: float, s: LinearProbeSettings, base_lr: float) -> float:
    """mae/util/lr_sched.py lines 9-21: linear warm-up, then a half-cycle cosine to min_lr (per iteration)."""
    if epoch < s.warmup_epochs:
        return base_lr * epoch / s.warmup_epochs
    span = max(s.probe_epochs - s.warmup_epochs, 1)
    return s.min_lr + (base_lr - s.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - s.warmup_epochs) / span))


def fit_probe(x_train: torch.Tensor, y_train: torch.Tensor, weights: torch.Tensor, x_val: torch.Tensor,
              y_val: np.ndarray, s: LinearProbeSettings, seed: int, auc) -> FittedProbe:
    """Train one head per weight decay side by side (one batched matmul per step) and keep the best by validation."""
    generator = torch.Generator().manual_seed(seed)
    x_train = x_train.double()
    mean = x_train.mean(0)
    std = (x_train.var(0, unbiased=False) + BN_EPS).sqrt()
    xs = ((x_train - mean) / std).float()
    xv = ((x_val.double() - mean) / std).float()
    mean, std = mean.float(), std.float()
    y = y_train.float()
    n, dim = xs.shape
    decays = torch.tensor(s.weight_decays, dtype=torch.float32)
    heads = decays.numel()
    weight = torch.nn.init.trunc_normal_(torch.empty(heads, 2, dim), std=INIT_STD, generator=generator)
    bias = torch.zeros(heads, 2)
    mu_w, mu_b = torch.zeros_like(weight), torch.zeros_like(bias)
    batch = min(s.probe_batch_size, n)
    steps = n // batch
    base_lr = s.blr * batch / 256
    best = (-math.inf, -1, 0)
    best_params = (weight[0, 1].clone(), bias[0, 1].clone())
    history = []
    for epoch in range(s.probe_epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(steps):
            lr = lr_at(epoch + step / steps, s, base_lr)
            idx = order[step * batch:(step + 1) * batch]
            xb, yb, wb = xs[idx], y[idx], weights[idx]
            z = xb @ weight[:, 1].t() + bias[:, 1]  # (batch, heads)
            dz = wb[:, None] * (torch.sigmoid(z) - yb[:, None]) / batch  # ∂ mean weighted BCE / ∂z, per head
            grad_w = torch.zeros_like(weight)
            grad_w[:, 1] = dz.t() @ xb
            grad_b = torch.zeros_like(bias)
            grad_b[:, 1] = dz.sum(0)
            # LARS (mae/util/lars.py): weight decay and the trust ratio on the 2-D weight of each head only
            dp = grad_w + decays[:, None, None] * weight
            w_norm = weight.flatten(1).norm(dim=1)
            d_norm = dp.flatten(1).norm(dim=1)
            trust = torch.where((w_norm > 0) & (d_norm > 0), LARS_TRUST * w_norm / d_norm, torch.ones_like(w_norm))
            mu_w.mul_(LARS_MOMENTUM).add_(dp * trust[:, None, None])
            mu_b.mul_(LARS_MOMENTUM).add_(grad_b)
            weight.sub_(lr * mu_w)
            bias.sub_(lr * mu_b)
        if (epoch + 1) % s.eval_every == 0 or epoch + 1 == s.probe_epochs:
            val = torch.sigmoid(xv @ weight[:, 1].t() + bias[:, 1]).double().numpy()
            aucs = [auc(y_val, val[:, h]) for h in range(heads)]
            history.append({"epoch": epoch, "val_auc_per_weight_decay": dict(zip(map(str, s.weight_decays), aucs,
                                                                                 strict=True))})
            for h, value in enumerate(aucs):  # a handful of heads; strictly better keeps the earlier (FairCLIP)
                if not math.isnan(value) and value > best[0]:
                    best = (value, epoch, h)
                    best_params = (weight[h, 1].clone(), bias[h, 1].clone())
            history[-1]["val_auc"] = max((a for a in aucs if not math.isnan(a)), default=math.nan)
    _, epoch, head = best
    return FittedProbe(mean, std, best_params[0], best_params[1], epoch, float(s.weight_decays[head]), history)
