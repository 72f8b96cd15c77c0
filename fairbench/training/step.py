"""One training step as one function built once per job, and the per-epoch loss bookkeeping kept on the device.

A GPU step of a small CLIP is short, so anything that makes the host wait for the device inside an epoch (reading a
loss back, branching on `isfinite`) or launches kernels one Python call at a time shows up in the epoch time. So
the step's forward and loss can be compiled (`compile` setting), and the loss terms, their sums and a "first
non-finite step" marker stay on the device until the epoch ends, when they are read once.

On a CPU the default is eager, and the numbers are exactly those of reading every term back each step: the sums are
accumulated in float64 in step order, which is what adding Python floats did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from fairbench.training.settings import COMPILE_MODES

if TYPE_CHECKING:
    from torch import nn

    from fairbench.method import Batch, Method

COMPILE_BACKEND: Any = None  # torch.compile's backend for TrainStep; None = inductor (tests swap in a cheap one)


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite."""


def resolve_compile(setting: str, device: torch.device, half_weights: bool = False) -> str | None:
    """The torch.compile mode a `compile` setting means on `device`: None = eager.

    auto compiles on CUDA (default mode) and stays eager elsewhere, and for FairCLIP's fp16-weights recipe, whose
    optimiser step swaps every weight tensor (so a captured graph would be rebuilt each step)."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {setting!r}")
    if setting == "auto":
        return "default" if device.type == "cuda" and not half_weights else None
    if setting == "cudagraphs" and half_weights:
        raise ValueError("compile=cudagraphs needs weights that stay in place, but precision=fp16-weights swaps them "
                         "at every optimiser step; use compile=on or compile=off")
    return {"off": None, "on": "default", "cudagraphs": "reduce-overhead"}[setting]


class TrainStep:
    """Forward under autocast, loss sum, backward, optimiser step and scheduler step of one batch.

    The forward and loss run compiled when `mode` is set (static shapes: one graph per batch shape), except for
    batches marked not `static` (an epoch's last, partial batch), which run the same code eagerly so that no epoch
    compiles a second graph. `backend` is torch.compile's (None = COMPILE_BACKEND, by default inductor with `mode`).

    FairCLIP's released loader keeps the last partial batch (FairCLIP/finetune_FairCLIP.py at HEAD caedce4,
    `train_dataloader = DataLoader(..., drop_last=False)`, lines 104-105), and so does the trainer; running it
    eagerly keeps its numbers those of the published protocol, where padding it would change them.
    """

    def __init__(self, method: Method, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                 device: torch.device, compute: torch.dtype, mixed: bool,
                 optimizer_step: Callable[[torch.optim.Optimizer], None] | None = None, mode: str | None = None,
                 backend: Any = None) -> None:
        self.method, self.model, self.optimizer, self.scheduler = method, model, optimizer, scheduler
        self.device, self.compute, self.mixed = device, compute, mixed
        self.optimizer_step = optimizer_step or (lambda opt: opt.step())
        self.mode = mode
        self.compiled = None
        if mode is not None:
            # a process that trains job after job would otherwise hit dynamo's per-function recompile limit (and
            # silently fall back to eager) after a few jobs: each job's step starts from an empty cache
            torch._dynamo.reset()
            kwargs: dict[str, Any] = {"dynamic": False}
            backend = backend if backend is not None else COMPILE_BACKEND
            if backend is not None:
                kwargs["backend"] = backend
            else:
                kwargs["mode"] = mode
            self.compiled = torch.compile(self.forward, **kwargs)

    def forward(self, batch: Batch, groups: dict[int, Batch]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.compute, enabled=self.mixed):
            terms = self.method.loss_terms(self.model, batch, groups)
        return terms, sum(t.float() for t in terms.values())

    def probe(self, batch: Batch, groups: dict[int, Batch], sets: dict[str, list[nn.Parameter]]
              ) -> dict[str, dict[str, float]]:
        """Each loss term's gradient norm on each parameter set for this batch (`fairbench.training.probe`), computed
        as the step computes its loss (eagerly), without changing anything the training depends on: eval mode, every
        random generator restored, gradients through `torch.autograd.grad` only, the optimiser untouched."""
        from fairbench.training.probe import gradient_norms
        from fairbench.training.resume import rng_state, set_rng_state

        was_training = self.model.training
        saved = rng_state()
        self.model.eval()
        try:
            with torch.autocast(self.device.type, dtype=self.compute, enabled=self.mixed):
                terms = self.method.loss_terms(self.model, batch, groups)
            return gradient_norms(terms, sets)
        finally:
            self.model.train(was_training)
            set_rng_state(saved)

    def __call__(self, batch: Batch, groups: dict[int, Batch], static: bool = True
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self.compiled is not None and static:
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            terms, loss = self.compiled(batch, groups)
        else:
            terms, loss = self.forward(batch, groups)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_step(self.optimizer)
        self.scheduler.step()
        return terms, loss


class EpochMeter:
    """Sums of the loss terms over an epoch and the first step whose loss was not finite, all on the device.

    `add` launches a few small kernels and never waits for the device; `means` and `check` read it back once.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_values: dict[str, torch.Tensor] = {}

    def add(self, step: int, terms: dict[str, torch.Tensor], loss: torch.Tensor) -> None:
        values = {k: v.detach().double() for k, v in terms.items()}
        values["loss"] = loss.detach().double()
        for k in values:
            if k not in self.sums:
                self.sums[k] = torch.zeros((), dtype=torch.float64, device=self.device)
        keys = list(values)
        torch._foreach_add_([self.sums[k] for k in keys], [values[k] for k in keys])
        new = ~torch.isfinite(values["loss"]) & (self.first_bad < 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        for k, v in terms.items():
            previous = self.bad_values.get(k)
            if previous is None:
                previous = torch.full((), torch.nan, dtype=torch.float64, device=self.device)
            self.bad_values[k] = torch.where(new, v.detach().double(), previous)

    def bad_step(self) -> int | None:
        """The first step whose loss was not finite (one read of the device), or None."""
        step = int(self.first_bad)
        return step if step >= 0 else None

    def check(self, epoch: int) -> None:
        """Raise TrainingDiverged naming the epoch, the first non-finite step and its terms, if there was one."""
        step = self.bad_step()
        if step is None:
            return
        values = dict(zip(self.bad_values, torch.stack(list(self.bad_values.values())).tolist(), strict=True))
        bad = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise TrainingDiverged(f"loss is not finite at epoch {epoch}, step {step} ({bad}); "
                               "lower the learning rate or the method's loss weights")

    def means(self, steps: int) -> dict[str, float]:
        """Per-step means of every term and the total, as the history records them."""
        if not self.sums:
            return {}
        totals = torch.stack(list(self.sums.values())).tolist()
        return {k: v / max(steps, 1) for k, v in zip(self.sums, totals, strict=True)}
