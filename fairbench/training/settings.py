"""The trainer's settings, resolved once per job, at planning, by `resolve_train_settings`.

A `TrainSettings` is plain data (it pickles to a worker process or a SLURM task); the planned job carries it, and
the trainer, the launchers, the displays and the interrupt message all read that one object. Every value is
checked against its allowed range when the object is made, so a bad `--set` is a one-line error before any run
starts. This module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from fairbench.method import SettingsError, convert_value

OPTIMIZERS = ("adam", "adamw")
TIE_RULES = ("earlier", "later")
PRECISIONS = ("auto", "fp32", "bf16", "fp16-weights")
COMPILE_MODES = ("auto", "off", "on", "cudagraphs")
GROUP_SAMPLING = ("reshuffle", "loader")
SAMPLINGS = ("method", "uniform", "group-balanced")  # fairbench.training.sampling defines each
MAX_THREADS = 1024  # torch CPU threads: more than any machine has cores

# Trainer settings that change how a run is executed but no number it produces: they stay out of the config
# hash (and config.json), so setting them never turns an existing run into a new one.
RUN_CONTROL_SETTINGS = ("keep_state", "device_data", "grad_probe")
# Settings added after run folders existed, with the default that reproduces the earlier behaviour: at that default
# they stay out of the config hash (and config.json), so every earlier run keeps its folder; set to anything else,
# they enter it like any setting.
LATER_SETTINGS: dict[str, object] = {"sampling": "method"}
ADAPTERS = ("none", "lora")
# Settings that enter the config only when an adapter is used (so older runs keep their hashes).
ADAPTER_SETTINGS = ("adapter", "adapter_rank", "adapter_alpha")


@dataclass
class TrainSettings:
    """Trainer hyperparameters; every field can be set with `--set name=value`."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-5
    betas: tuple[float, float] = (0.1, 0.1)
    eps: float = 1e-6
    weight_decay: float = 6e-5
    warmup_steps: int = 0  # linear learning-rate warm-up; the published protocol has none
    select: str = "val"  # a registered selection rule (fairbench.selection)
    ties: str = "earlier"  # which epoch wins when the selection keys are equal
    # how group batches are cut from each group's pool (GroupSampler): reshuffle = always full batches; loader =
    # FairCLIP's endless shuffled DataLoader, each pass a permutation ending in a short batch
    group_sampling: str = "reshuffle"
    # auto = bf16 autocast with fp32 weights on CUDA, fp32 on CPU; fp16-weights = FairCLIP's released recipe on
    # CUDA (a plain fp16 model, no autocast, fp32 only for the optimiser step, then rounded back), fp32 on CPU.
    precision: str = "auto"
    frozen: tuple[str, ...] = ()  # top-level model attributes whose parameters never train (see protocols)
    fp32_numerics: bool = True  # scores and similarity distributions in fp32 outside autocast (training.precision)
    eval_batch_size: int = 256
    max_steps_per_epoch: int = 0  # 0 = full epochs; small values make smoke tests fast
    checkpoint: bool = False  # save the selected epoch's weights as checkpoint.pt
    threads: int = 0  # torch CPU threads; 0 = leave as is
    keep_state: bool = False  # keep train_state.pt (the resume point) after the run finishes; run control only
    # auto = torch.compile on CUDA, eager elsewhere; on / cudagraphs = torch.compile's default / reduce-overhead
    # mode; off = eager. Compiled kernels round differently from eager ones, so this is part of the config.
    compile: str = "auto"
    # share of the free GPU memory the training split may take to live on the GPU for the whole job (gathered and
    # normalised there); otherwise pinned host memory, copied one step ahead. 0 = always on the host. Run control.
    device_data: float = 0.5
    # once per epoch, each loss term's gradient norm on the trainable parameters (fairbench.training.probe), recorded
    # in history.json; changes no number of the training. Run control.
    grad_probe: bool = True
    # how an epoch's batches are drawn (fairbench.training.sampling): method = the method's own choice (uniform
    # except `resample`), uniform = one shuffled pass, group-balanced = draws with replacement, each group of the
    # training attribute equally likely. Its own setting, so a method and a sampler are never confounded.
    sampling: str = "method"
    # parameter-efficient fine-tuning (fairbench.models.adapters): none = the method trains what it trains; lora =
    # LoRA adapters of rank `adapter_rank` and scale `adapter_alpha` on the backbone's attention projections, the
    # backbone frozen. Set as `--set adapter=lora --set adapter.rank=8`. Left out of the config while "none", so
    # runs without adapters keep their config hashes.
    adapter: str = "none"
    adapter_rank: int = 8
    adapter_alpha: float = 16.0

    def __post_init__(self) -> None:
        from fairbench.registry import UnknownNameError
        from fairbench.selection import get_select_rule

        for f in fields(self):
            check = _CHECKS.get(f.name)
            value = getattr(self, f.name)
            if check is not None and not _holds(check[0], value):
                raise SettingsError(f"trainer setting {f.name} must be {check[1]}, got {value!r}")
        try:
            get_select_rule(self.select)
        except UnknownNameError as exc:
            raise SettingsError(f"trainer setting select: {exc}") from None


def _holds(test: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# field → (test, the allowed range in words): the one place a trainer setting's range is written.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "batch_size": (lambda v: _integer(v) and v >= 2, "an integer ≥ 2 (a contrastive loss needs two pairs)"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "betas": (lambda v: len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v),
              "two numbers in [0, 1), e.g. 0.9,0.98"),
    "eps": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number ≥ 0"),
    "warmup_steps": (lambda v: _integer(v) and v >= 0, "an integer ≥ 0 (0 = no warm-up)"),
    "ties": (lambda v: v in TIE_RULES, f"one of {', '.join(TIE_RULES)}"),
    "group_sampling": (lambda v: v in GROUP_SAMPLING, f"one of {', '.join(GROUP_SAMPLING)}"),
    "sampling": (lambda v: v in SAMPLINGS, f"one of {', '.join(SAMPLINGS)}"),
    "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "frozen": (lambda v: all(isinstance(p, str) and p for p in v), "a list of model attribute names"),
    "eval_batch_size": (lambda v: _integer(v) and v >= 1, "an integer ≥ 1"),
    "max_steps_per_epoch": (lambda v: _integer(v) and v >= 0, "an integer ≥ 0 (0 = full epochs)"),
    "threads": (lambda v: _integer(v) and 0 <= v <= MAX_THREADS,
                f"an integer from 0 (torch's own count) to {MAX_THREADS}"),
    "compile": (lambda v: v in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}"),
    "device_data": (lambda v: _finite(v) and 0.0 <= v <= 1.0,
                    "a fraction between 0 and 1 (0 = keep the training data on the host)"),
    "adapter": (lambda v: v in ADAPTERS, f"one of {', '.join(ADAPTERS)}"),
    "adapter_rank": (lambda v: _integer(v) and 1 <= v <= 4096, "an integer from 1 to 4096"),
    "adapter_alpha": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
}


def train_key(key: str) -> str:
    """A trainer setting's field name for a `--set` key: `adapter.rank` is the field `adapter_rank`."""
    flat = key.replace(".", "_")
    return flat if "." in key and flat in setting_names() else key


def setting_names() -> list[str]:
    """Every trainer setting's `--set` name."""
    return [f.name for f in fields(TrainSettings)]


def resolve_train_settings(arch: str, protocol: str = "fairbench", overrides: Mapping[str, str] | None = None, *,
                           epochs: int | None = None, select: str | None = None) -> TrainSettings:
    """The trainer settings of one job, resolved in this order (a later step wins):

    1. the arch's `train_defaults` (fairbench.models.archs);
    2. the protocol's `train` settings, and for a towers-only protocol the arch's `frozen` parts;
    3. `--set` overrides (strings, converted to each field's type), a study's `[set]` included;
    4. the flags `--epochs` and `--select`.
    Raises SettingsError (one line, naming the setting and its allowed range) for a bad value.
    """
    from fairbench.models.archs import get_arch
    from fairbench.protocols import get_protocol

    spec = get_arch(arch)
    chosen = get_protocol(protocol)
    values: dict[str, Any] = {**spec.train_defaults, **chosen.train}
    if chosen.towers_only:
        values["frozen"] = tuple(spec.frozen)
    defaults = TrainSettings(**values)
    known = setting_names()
    for key, raw in (overrides or {}).items():
        key = train_key(key)
        if key not in known:
            raise SettingsError(f"the trainer has no setting {key!r}; settable: {', '.join(known)}")
        values[key] = convert_value(raw, getattr(defaults, key), f"trainer setting {key!r}")
    if epochs is not None:
        values["epochs"] = epochs
    if select is not None:
        values["select"] = select
    return TrainSettings(**values)
