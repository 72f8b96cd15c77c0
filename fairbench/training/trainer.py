"""The one trainer every method runs under.

A method supplies the model and named loss terms; this module owns the optimiser, precision, seeding,
epochs, group batches, validation, checkpoints and model selection, so methods differ only where they
should. Selection on validation AUC is the default; "test" reproduces the papers' best-test-epoch rule
(optimistic, and labelled as such wherever it appears).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fairbench.method import Batch, Method
from fairbench.selection import EpochView, get_select_rule
from fairbench.training.feeder import Feeder, SplitData, choose_placement, device_data_fraction, split_nbytes
from fairbench.training.probe import ALL, inert_warnings, probe_record
from fairbench.training.resume import TrainState, rng_state, set_rng_state
from fairbench.training.sampling import draw_weights, epoch_order
from fairbench.training.settings import GROUP_SAMPLING, RUN_CONTROL_SETTINGS, TrainSettings  # noqa: F401
from fairbench.training.step import (
    EpochMeter,
    TrainingDiverged,  # noqa: F401 - raised by train(); callers import it here
    TrainStep,
    resolve_compile,
)
from fairbench.training.zeroshot import zero_shot_scores


@dataclass
class TrainOutcome:
    """What a finished training returns: selected-epoch scores and the history of every epoch."""

    best_epoch: int
    val_scores: np.ndarray
    test_scores: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    trainable_parameters: int | None = None  # parameters the optimiser (or a mode's own fit) updated
    details: dict[str, Any] = field(default_factory=dict)  # a mode's own facts for result.json (e.g. the chosen C)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GroupSampler:
    """Endless batches per group, one draw of every group per step, without Python per-sample work.

    `mode` says how a group's pool is cut into batches:

    * "reshuffle" (fairbench's default): every batch is full (`batch_size`, or the whole pool when it is smaller);
      when fewer than a batch remain, the pool is reshuffled and the batch is taken from the new order.
    * "loader": as FairCLIP's group loaders yield them, an endless `DataLoader(group, batch_size, shuffle=True,
      drop_last=False)` (FairCLIP/finetune_FairCLIP.py lines 117-124 and `endless_loader`, src/modules.py lines
      256-259): each pass over a pool is one permutation cut into batches of `batch_size`, the last one short
      (pool mod batch_size) when the size does not divide the pool; the next pass is a new permutation. A pool of
      70 gives 32, 32, 6, 32, 32, 6, ...

    Both draw one `torch.randperm` of the pool from `generator` per new order, so the state is the same pair of
    dicts in either mode.
    """

    def __init__(self, groups: torch.Tensor, n_groups: int, batch_size: int, generator: torch.Generator,
                 mode: str = "reshuffle") -> None:
        if mode not in GROUP_SAMPLING:
            raise ValueError(f"group sampling must be one of {', '.join(GROUP_SAMPLING)}, got {mode!r}")
        self.pools = {g: torch.nonzero(groups == g).flatten() for g in range(n_groups)}
        self.pools = {g: idx for g, idx in self.pools.items() if idx.numel() > 0}
        self.batch_size = batch_size
        self.generator = generator
        self.mode = mode
        self.order: dict[int, torch.Tensor] = {}
        self.pos: dict[int, int] = {}

    def next(self) -> dict[int, torch.Tensor]:
        """Each group's next batch of training indices."""
        out = {}
        for g, pool in self.pools.items():  # ≤ a handful of groups
            n = pool.numel()
            if self.mode == "loader":
                new_order = g not in self.order or self.pos[g] >= n
            else:
                new_order = g not in self.order or self.pos[g] + min(self.batch_size, n) > n
            if new_order:
                self.order[g] = pool[torch.randperm(n, generator=self.generator)]
                self.pos[g] = 0
            take = min(self.batch_size, n - self.pos[g])
            out[g] = self.order[g][self.pos[g]:self.pos[g] + take]
            self.pos[g] += take
        return out

    def state_dict(self) -> dict[str, Any]:
        """Each group's current shuffled order and position (the generator is saved by the trainer)."""
        return {"order": dict(self.order), "pos": dict(self.pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = dict(state["order"])
        self.pos = dict(state["pos"])


def train(method: Method, model: nn.Module, settings: TrainSettings, *, train_data: SplitData, val_data: SplitData,
          test_data: SplitData, normalize: Callable[[torch.Tensor], torch.Tensor],
          tokenize: Callable[[list[str]], torch.Tensor], prompts: tuple[str, str], seed: int, device: torch.device,
          auc: Callable[[np.ndarray, np.ndarray], float],
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          progress: Callable[[int, int], None] | None = None, label: str = "the positive class",
          resume: TrainState | None = None,
          on_epoch_state: Callable[[TrainState], None] | None = None) -> TrainOutcome:
    """Train `model` with `method`'s loss terms and return the selected epoch's val/test scores.

    `prompts` are the dataset's zero-shot prompts of class 0 and class 1; `label` names class 1 in warnings.
    `resume` continues after the epochs a previous call completed (same arguments otherwise); `on_epoch_state`
    receives the state after every epoch (after `on_epoch`), between epochs, to save it for such a resume.
    """
    from fairbench.training.precision import native_numerics

    with native_numerics(not settings.fp32_numerics):
        return _train(method, model, settings, train_data=train_data, val_data=val_data, test_data=test_data,
                      normalize=normalize, tokenize=tokenize, prompts=prompts, seed=seed, device=device, auc=auc,
                      on_epoch=on_epoch, progress=progress, label=label, resume=resume,
                      on_epoch_state=on_epoch_state)


def _train(method: Method, model: nn.Module, settings: TrainSettings, *, train_data: SplitData, val_data: SplitData,
           test_data: SplitData, normalize: Callable[[torch.Tensor], torch.Tensor],
           tokenize: Callable[[list[str]], torch.Tensor], prompts: tuple[str, str], seed: int, device: torch.device,
           auc: Callable[[np.ndarray, np.ndarray], float], on_epoch: Callable[[dict[str, Any]], None] | None,
           progress: Callable[[int, int], None] | None, label: str, resume: TrainState | None,
           on_epoch_state: Callable[[TrainState], None] | None) -> TrainOutcome:
    seed_everything(seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    half_weights, use_bf16 = precision_plan(settings.precision, device)
    if half_weights:
        from fairbench.training.precision import release_fp16

        release_fp16(model)  # FairCLIP's plain fp16 model on a GPU: fp16 inputs, no autocast
        normalize = _to_half(normalize)
    method.prepare(train_data.groups, train_data.labels)  # may refuse the attribute: before any step
    trainable = _unfrozen(method.trainable_parameters(model), model, settings.frozen)
    optimizer = _make_optimizer(trainable, settings, method.parameter_groups(model))
    warmup = max(settings.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    n_train = train_data.labels.shape[0]
    draws = draw_weights(settings.sampling, method, train_data.groups, train_data.labels)
    steps = math.ceil(n_train / settings.batch_size)
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    sampler = None
    full_groups: dict[int, int] = {}
    if method.group_batches:
        if train_data.groups is None:
            raise ValueError(f"method {method.name!r} needs group batches but no training attribute was given")
        size = method.group_batch_size() or settings.batch_size
        sampler = GroupSampler(train_data.groups, method.n_groups, size, generator, settings.group_sampling)
        full_groups = {g: min(size, pool.numel()) for g, pool in sampler.pools.items()}

    placement = choose_placement(split_nbytes(train_data), device, device_data_fraction(settings.device_data))
    feeder = Feeder(train_data, device, normalize, placement)
    run_step = TrainStep(method, model, optimizer, scheduler, device=device, compute=torch.bfloat16, mixed=use_bf16,
                         optimizer_step=fp32_optimizer_step if half_weights else None,
                         mode=resolve_compile(settings.compile, device, half_weights))
    probe_sets = _probe_sets(method, model, [p for p in trainable if p.requires_grad]) if settings.grad_probe else {}

    outcome = TrainOutcome(best_epoch=-1, val_scores=np.zeros(0), test_scores=np.zeros(0),
                           trainable_parameters=sum(p.numel() for p in {id(p): p for p in trainable
                                                                        if p.requires_grad}.values()))
    best_key = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    rule = get_select_rule(settings.select)
    over_epochs = rule.over_epochs is not None  # a rule over all epochs keeps every epoch it may still choose
    saves_weights = settings.checkpoint or settings.adapter != "none"  # adapters are saved with the run
    keep_best = (rule.split == "val" or saves_weights) and not over_epochs
    candidates: dict[int, dict[str, Any]] = {}  # epoch → {"weights", "val_scores"} under such a rule
    first_epoch = 0
    if resume is not None:
        first_epoch, best_key, best_state = _restore(resume, model, optimizer, scheduler, generator, sampler,
                                                     outcome, keep_best)
        candidates = {int(e): c for e, c in resume.candidates.items()}
        if over_epochs and outcome.best_epoch in candidates:
            best_state = candidates[outcome.best_epoch]["weights"]
    score = lambda data: zero_shot_scores(  # noqa: E731 - a local shorthand
        model, data.images, tokenize, prompts, normalize, device, settings.eval_batch_size, autocast=use_bf16)
    for epoch in range(first_epoch, settings.epochs):
        t0 = time.perf_counter()
        order = epoch_order(n_train, draws, generator)
        meter = EpochMeter(device)
        plan = EpochPlan(order, steps, settings.batch_size, sampler, feeder)
        batches = plan.batches(0)
        probe: dict[str, Any] = {}
        probe_s = 0.0
        if probe_sets:  # the batch the epoch trains on first, before it does; not counted as training time
            t_probe = time.perf_counter()
            probe = probe_record(run_step.probe(*batches, probe_sets))
            method.step_stats(model)  # the probe's own diagnostics are not the epoch's
            probe_s = time.perf_counter() - t_probe
        try:
            for i, step in enumerate(plan.steps):
                batch, groups = batches
                static = batch.labels.shape[0] == settings.batch_size and all(
                    gb.labels.shape[0] == full_groups[g] for g, gb in groups.items())
                terms, loss = run_step(batch, groups, static=static)
                meter.add(step, terms, loss)
                del terms, loss
                if i + 1 < len(plan.steps):  # gathered and copied while the device runs this step
                    batches = plan.batches(i + 1)
                if progress:
                    progress(epoch * steps + step + 1, settings.epochs * steps)
        except Exception:  # a step after a non-finite loss may fail on NaNs: report the divergence
            if meter.bad_step() is not None:
                meter.check(epoch)
            raise
        meter.check(epoch)
        train_s = time.perf_counter() - t0 - probe_s
        outcome.train_seconds += train_s
        t1 = time.perf_counter()
        val_scores = score(val_data)
        val_auc = auc(val_data.labels.numpy(), val_scores)
        record: dict[str, Any] = {"epoch": epoch, "train": meter.means(steps), **probe,
                                  "val_auc": val_auc, "train_seconds": train_s}
        test_scores = None
        if rule.split == "test":
            test_scores = score(test_data)
            record["test_auc"] = auc(test_data.labels.numpy(), test_scores)
        record.update(method.step_stats(model))
        if over_epochs:
            view = _epoch_view(rule.split, val_data, val_scores, val_auc)
            record["select_point"] = [float(x) for x in rule.point(view)]
            candidates[epoch] = {"weights": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                                 "val_scores": torch.from_numpy(np.ascontiguousarray(val_scores))}
            best_key, chosen = _choose_over_epochs(rule, [*outcome.history, record], candidates, settings.ties)
            outcome.best_epoch = chosen
            outcome.val_scores = candidates[chosen]["val_scores"].numpy()
            best_state = candidates[chosen]["weights"]
            better = False
        else:
            key = rule.key(_epoch_view(rule.split, val_data, val_scores, val_auc) if rule.split == "val"
                           else _epoch_view(rule.split, test_data, test_scores, record["test_auc"]))
            key = -math.inf if key is None or math.isnan(key) else key
            better = key >= best_key if settings.ties == "later" else key > best_key
        if not over_epochs and (better or outcome.best_epoch < 0):
            best_key = key
            outcome.best_epoch = epoch
            outcome.val_scores = val_scores
            if test_scores is not None:
                outcome.test_scores = test_scores
            if keep_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        outcome.eval_seconds += time.perf_counter() - t1
        record["eval_seconds"] = time.perf_counter() - t1
        outcome.history.append(record)
        if on_epoch:
            on_epoch(record)
        if on_epoch_state:
            on_epoch_state(TrainState(
                epochs_done=epoch + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), generator=generator.get_state(), rng=rng_state(),
                sampler=sampler.state_dict() if sampler else None, history=list(outcome.history),
                best_epoch=outcome.best_epoch, best_key=best_key, val_scores=outcome.val_scores,
                test_scores=outcome.test_scores, best_is_current=keep_best and outcome.best_epoch == epoch,
                best_weights=best_state if keep_best and outcome.best_epoch != epoch else None,
                train_seconds=outcome.train_seconds, eval_seconds=outcome.eval_seconds,
                candidates={str(e): c for e, c in candidates.items()}))
    if rule.split == "val":  # test data is scored once, with the selected weights
        t1 = time.perf_counter()
        model.load_state_dict(best_state)
        outcome.test_scores = score(test_data)
        outcome.eval_seconds += time.perf_counter() - t1
    outcome.state_dict = best_state if saves_weights else None
    candidates.clear()
    outcome.warnings += inert_warnings(outcome.history)
    best_val = outcome.history[outcome.best_epoch]["val_auc"]
    if best_val is not None and not math.isnan(best_val) and best_val < 0.5:
        outcome.warnings.append(
            f"validation AUC {best_val:.3f} is below 0.5: the model ranks {label} backwards (the two prompts "
            f"{prompts[0]!r} / {prompts[1]!r} may be inverted for this text source; check that the training texts "
            "use the prompts' wording)")
    return outcome


def _epoch_view(split: str, data: SplitData, scores: np.ndarray, split_auc: float) -> EpochView:
    groups = data.groups.numpy() if data.groups is not None else None
    attributes = {k: v.numpy() for k, v in data.attributes.items()} if data.attributes else None
    return EpochView(split, data.labels.numpy(), scores, groups, split_auc, attributes)


def _choose_over_epochs(rule: Any, history: list[dict[str, Any]], candidates: dict[int, dict[str, Any]],
                        ties: str) -> tuple[float, int]:
    """(key, epoch) a rule over all epochs picks from every epoch's recorded point, ties by `ties`; then drops the
    candidates no later epoch can make it pick: an epoch another epoch beats on every coordinate (weakly, and
    strictly on one) is never closer to the per-coordinate best, however the best moves."""
    points = np.array([h["select_point"] for h in history], dtype=float)
    keys = np.nan_to_num(np.asarray(rule.over_epochs(points), dtype=float), nan=-np.inf)
    best = keys.max()
    winners = np.flatnonzero(keys == best)
    chosen = int(winners[-1] if ties == "later" else winners[0])
    finite = np.isfinite(points).all(axis=1)
    for epoch in list(candidates):
        if epoch == chosen or not finite[epoch]:
            continue
        others = points[finite]
        if ((others >= points[epoch]).all(axis=1) & (others > points[epoch]).any(axis=1)).any():
            del candidates[epoch]
    return float(best), chosen


class EpochPlan:
    """The steps an epoch runs and their batches: the shuffled order, and every group batch of the epoch drawn up
    front in step order (the same draws as one `GroupSampler.next()` per step), moved where the data lives once.

    A group's draws are kept as one flat index tensor with each step's offset, so a short batch (the "loader"
    sampling's end of a pass) is sliced like any other."""

    def __init__(self, order: torch.Tensor, steps: int, batch_size: int, sampler: GroupSampler | None,
                 feeder: Feeder) -> None:
        self.feeder = feeder
        self.batch_size = batch_size
        # a contrastive loss needs two pairs: a last batch of one is skipped
        self.steps = [s for s in range(steps) if order[s * batch_size:(s + 1) * batch_size].numel() >= 2]
        self.order = feeder.indices(order)
        draws = [sampler.next() for _ in self.steps] if sampler else []
        self.groups: dict[int, tuple[torch.Tensor, list[int]]] = {}
        for g in draws[0] if draws else ():
            offsets = [0, *itertools.accumulate(d[g].numel() for d in draws)]  # one entry per step, not per sample
            self.groups[g] = (feeder.indices(torch.cat([d[g] for d in draws])), offsets)

    def batches(self, i: int) -> tuple[Batch, dict[int, Batch]]:
        """The i-th step's batch and group batches on the training device."""
        s = self.steps[i]
        batch = self.feeder.batch(self.order[s * self.batch_size:(s + 1) * self.batch_size])
        return batch, {g: self.feeder.batch(idx[offsets[i]:offsets[i + 1]]) for g, (idx, offsets) in
                       self.groups.items()}


def precision_plan(precision: str, device: torch.device) -> tuple[bool, bool]:
    """(plain fp16 model, bf16 autocast) for a `precision` setting on `device`. `fp16-weights` is FairCLIP's model on
    a GPU — fp16 weights and compute with no autocast at all — and fp32 on a CPU (finetune_FairCLIP.py lines 141–144);
    `auto` is bf16 autocast over fp32 weights on a GPU and fp32 on a CPU; `bf16` autocasts everywhere."""
    half = precision == "fp16-weights" and device.type == "cuda"
    return half, precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _to_half(normalize: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model input for the plain fp16 model: OpenAI's CLIP casts the image to its weights' dtype in `encode_image`
    (`image.type(self.dtype)`), open_clip's does not, so the normalised batch is cast here."""
    return lambda images: normalize(images).half()


def _probe_sets(method: Method, model: nn.Module, trainable: list[nn.Parameter]) -> dict[str, list[nn.Parameter]]:
    """The parameter sets the gradient probe reports: every trainable parameter, and the method's named subsets
    (`Method.probe_parameters`) restricted to the trainable ones (a frozen parameter's gradient cannot matter)."""
    ids = {id(p) for p in trainable}
    sets = {ALL: trainable}
    for name, params in method.probe_parameters(model).items():
        kept = [p for p in params if id(p) in ids]
        if kept:
            sets[name] = kept
    return sets


def _unfrozen(parameters, model: nn.Module, frozen: tuple[str, ...]) -> list[nn.Parameter]:
    """The method's trainable parameters minus those under the protocol's frozen attributes of the CLIP model.

    The names are attributes of the CLIP module itself (the one holding `visual` and `logit_scale`), wherever a
    method's wrapper puts it (Fair-MoE nests it as `clip.`); `visual.positional_embedding` is not the frozen
    `positional_embedding`."""
    prefixes = [name for name, module in model.named_modules()
                if hasattr(module, "visual") and hasattr(module, "logit_scale")]
    if frozen and not prefixes:
        raise ValueError(f"the protocol freezes {', '.join(frozen)}, but the model has no CLIP module (one with "
                         "`visual` and `logit_scale`); use a protocol without frozen parts")
    roots = tuple(f"{prefix}." if prefix else "" for prefix in prefixes)

    def under(name: str, part: str) -> bool:
        return any(name.startswith(root + part) and name[len(root + part):len(root + part) + 1] in ("", ".")
                   for root in roots)

    names = [name for name, _ in model.named_parameters()]
    absent = [part for part in frozen if not any(under(name, part) for name in names)]
    if absent:  # a rule written for another tower family would silently train what it means to freeze
        raise ValueError(f"the protocol freezes {', '.join(absent)}, which the model ({type(model).__name__}) does "
                         "not have: the arch's frozen parts are for another tower family (fairbench.models.archs."
                         "TOWER_FROZEN)")
    blocked = {id(p) for name, p in model.named_parameters() if any(under(name, part) for part in frozen)}
    return [p for p in parameters if id(p) not in blocked]


def fp32_optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """FairCLIP's step on fp16 weights: convert the weights (and grads) to fp32, step, round back to fp16.

    FairCLIP's finetune_FairCLIP.py calls `convert_models_to_fp32(model)`, `optimizer.step()` and then
    `clip.model.convert_weights(model)`; the Adam state lives in fp32, and an update smaller than half an fp16
    spacing of its weight (at lr 1e-5, most of them) is lost in the rounding.
    """
    halves = [p for group in optimizer.param_groups for p in group["params"] if p.dtype == torch.float16]
    for p in halves:
        p.data = p.data.float()
        if p.grad is not None:
            p.grad = p.grad.float()
    optimizer.step()
    for p in halves:
        p.data = p.data.half()
        if p.grad is not None:
            p.grad = p.grad.half()


def _restore(state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
             generator: torch.Generator, sampler: GroupSampler | None, outcome: TrainOutcome,
             keep_best: bool) -> tuple[int, float, dict[str, torch.Tensor] | None]:
    """Put every piece of `state` back; returns the first epoch to run, the best key and the best weights."""
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    generator.set_state(state.generator)
    if sampler is not None and state.sampler is not None:
        sampler.load_state_dict(state.sampler)
    set_rng_state(state.rng)
    outcome.history = list(state.history)
    outcome.best_epoch = state.best_epoch
    outcome.val_scores, outcome.test_scores = state.val_scores, state.test_scores
    outcome.train_seconds, outcome.eval_seconds = state.train_seconds, state.eval_seconds
    best = state.best_weights
    if keep_best and state.best_is_current:
        best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return state.epochs_done, state.best_key, best if keep_best else None


def _make_optimizer(parameters, s: TrainSettings,
                    extra: list[tuple[list[nn.Parameter], float]] = ()) -> torch.optim.Optimizer:
    """Adam/AdamW over the method's trainable parameters, fused where this torch build supports it: one update
    kernel over all of them instead of several per tensor, which a small CLIP feels (most of its parameters are the
    token embedding, updated densely). `extra` adds the method's own groups (`Method.parameter_groups`), each at the
    trainer's lr times its multiplier; with none, the optimiser is the single group it always was."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("the method's trainable_parameters() gave no parameter that requires a gradient")
    taken = {id(p) for p in params}
    groups: list[Any] = params
    extra_groups = [{"params": [p for p in ps if p.requires_grad and id(p) not in taken], "lr": s.lr * scale}
                    for ps, scale in extra]
    extra_groups = [g for g in extra_groups if g["params"]]
    if extra_groups:
        groups = [{"params": params}, *extra_groups]
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    kwargs = {"lr": s.lr, "betas": tuple(s.betas), "eps": s.eps, "weight_decay": s.weight_decay}
    try:
        return cls(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch or an unsupported device/dtype
        return cls(groups, **kwargs)
