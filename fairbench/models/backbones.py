"""CLIP backbones by arch name (fairbench.models.archs), with their weights.

Weights come from open_clip's hub tags (`openai`, ...) where the network allows, or from a local file: an
open_clip/OpenAI state dict, OpenAI's TorchScript `.pt`, or a FairCLIP-style checkpoint `{'model_state_dict': ...}`.
Local pickles are read with `weights_only=True`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairbench.models.archs import (  # noqa: F401 - InputSpec and WeightsUnavailableError are re-exported
    PRETRAINED_HERE,
    InputSpec,
    WeightsUnavailableError,
    get_arch,
    hub_error,
    quiet_root_logger,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Backbone:
    """A CLIP model plus what the data pipeline needs to feed it."""

    model: nn.Module
    tokenize: Callable[[list[str]], torch.Tensor]
    tokenizer_key: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: str
    pretrained: str | None

    def normalizer(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 images → this model's normalised floats, with the mean and std placed on `device` once (not per
        batch)."""
        from fairbench.datasets import normalize_images

        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return lambda x: normalize_images(x, mean, std)


def input_spec(arch: str) -> InputSpec:
    """The input pipeline of `arch` (validates the arch name)."""
    return get_arch(arch).inputs()


def default_weights_built_here(arch: str) -> bool:
    """Whether `arch`'s default weights come from fairbench.training.pretrain (no hub has them)."""
    return get_arch(arch).builds_default_weights


def create_backbone(arch: str, pretrained: str | None = "default", device: str | torch.device = "cpu") -> Backbone:
    """Build `arch` with weights `pretrained` ("default" = the arch's usual weights; None = random init; a local
    checkpoint file is loaded strictly over a random init)."""
    spec = get_arch(arch)
    inputs = spec.inputs()
    if pretrained == "default":
        pretrained = spec.default_weights
    if pretrained == PRETRAINED_HERE:
        raise WeightsUnavailableError(f"arch {arch!r}'s default weights are built by fairbench.training.pretrain for a "
                                      "dataset; pass their checkpoint file, or None for random init")
    local = Path(str(pretrained)).expanduser() if pretrained else None
    is_file = local is not None and local.is_file()
    model = spec.create(None if is_file else pretrained)
    if is_file:
        load_local_weights(model, inputs.model_name, local)
    model.to(device)
    mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
    return Backbone(model=model, tokenize=inputs.tokenize, tokenizer_key=inputs.tokenizer_key,
                    image_size=inputs.image_size, mean=mean, std=std, arch=arch, pretrained=pretrained)


def shape_map(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def meta_model(arch: str) -> nn.Module:
    """`arch`'s model with its parameters on the meta device: its names and shapes, without memory or init cost."""
    spec = get_arch(arch)
    with torch.device("meta"), quiet_root_logger():
        try:
            return spec.create(None)
        except NotImplementedError:  # open_clip's factory moves the model to a device: ask it for the meta one
            import open_clip

            return open_clip.create_model(spec.model_name, pretrained=None, device="meta", load_weights=False,
                                          pretrained_text=False)


def first_mismatches(want: dict[str, tuple[int, ...]], have: dict[str, tuple[int, ...]], k: int = 3) -> list[str]:
    """Up to `k` keys that differ, in the model's order: missing, shape-mismatched, then unexpected."""
    out = [f"{key} (missing)" if key not in have else f"{key} (checkpoint {list(have[key])}, arch {list(shape)})"
           for key, shape in want.items() if have.get(key) != shape]
    out += [f"{key} (unexpected)" for key in have if key not in want]
    return out[:k]


def looks_like(have: dict[str, tuple[int, ...]]) -> str:
    """Which registered arch a checkpoint's names and shapes fit (or fit best), for the mismatch message."""
    from fairbench.models.archs import list_archs

    best, best_score = "", -1.0
    for name in list_archs():
        try:
            want = shape_map(meta_model(name))
        except Exception:  # an arch that cannot build on the meta device is just not a candidate
            continue
        score = sum(have.get(k) == v for k, v in want.items()) / max(len(want), len(have), 1)
        if score == 1.0:
            return f"it looks like arch {name!r} (--arch {name})"
        if score > best_score:
            best, best_score = name, score
    if best and best_score > 0:
        return f"it looks most like arch {best!r} ({best_score:.0%} of keys fit), i.e. none of the registered archs"
    return "it fits none of the registered archs (tiny, b16, l14, ...); pass the open_clip model name as --arch"


def check_checkpoint_fits(arch: str, path: Path) -> None:
    """Before any run folder: a local checkpoint must have exactly the arch's names and shapes; otherwise one line
    naming the first mismatched keys and the arch the checkpoint looks like."""
    model = meta_model(arch)
    want = shape_map(model)
    state = _adapt_keys(read_checkpoint(path), model)
    have = {k: tuple(v.shape) for k, v in state.items()}
    wrong = first_mismatches(want, have)
    if wrong:
        raise WeightsUnavailableError(f"checkpoint {path} does not fit arch {arch!r} ({get_arch(arch).model_name}): "
                                      f"first mismatched keys {'; '.join(wrong)}; {looks_like(have)}")


def load_local_weights(model: nn.Module, model_name: str, path: Path) -> None:
    """Load a local checkpoint strictly: a partial load would silently train a half-random model."""
    state = read_checkpoint(path)
    try:
        missing, unexpected = model.load_state_dict(_adapt_keys(state, model), strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
        raise WeightsUnavailableError(f"checkpoint {path} does not fit {model_name}: {detail[:200]}; "
                                      "check --arch") from None
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"checkpoint {path} does not fit {model_name}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); check --arch"
        )


def cpu_estimate(arch: str, jobs: list[Any]) -> str | None:
    """A warning with a lower bound on how long `jobs` (planned jobs of `arch`) take on this CPU, or None.

    Bound = the arch's counted FLOPs per step × steps ÷ the FLOP rate this CPU reaches on a large matmul (no
    train step runs faster than that); methods with group batches cost 2–3× a CLIP step on top.
    """
    import math
    import time

    spec = get_arch(arch)
    if spec.step_tflop_b32 is None or not jobs:
        return None
    a = torch.randn(1024, 1024)
    torch.mm(a, a)
    start, reps = time.perf_counter(), 8
    for _ in range(reps):
        torch.mm(a, a)
    tflops = 2 * 1024**3 * reps / (time.perf_counter() - start) / 1e12
    steps = sum(job.settings.epochs * math.ceil(job.n_train / job.settings.batch_size) * job.settings.batch_size / 32
                for job in jobs)
    hours = steps * spec.step_tflop_b32 / tflops / 3600
    return (f"{len(jobs)} {arch} run(s) on a CPU: at least {hours:,.1f} h ({steps:,.0f} steps of "
            f"{spec.step_tflop_b32} TFLOP at the {tflops * 1000:.0f} GFLOP/s this CPU reaches on a matmul; "
            "group-batch methods take 2–3× more). Use a GPU, or --arch tiny for a CPU demo.")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def ensure_weights(arch: str, pretrained: str | None = "default") -> str:
    """Make sure `arch`'s weights can be had before any run folder exists: a local file must exist, a hub tag
    must be known to open_clip and downloadable (or cached, offline). Returns a short description."""
    spec = get_arch(arch)
    if pretrained == "default":
        pretrained = spec.default_weights
    if not pretrained:
        return "random init"
    if pretrained == PRETRAINED_HERE:
        return "pretrained on the dataset's pretraining set (built once, fairbench.training.pretrain)"
    local = Path(str(pretrained)).expanduser()
    if local.is_file():
        if local.suffix == ".safetensors":  # its header says how long it must be: a truncated copy fails here, once
            from safetensors import safe_open

            try:
                with safe_open(str(local), framework="pt"):
                    pass
            except Exception as exc:
                raise WeightsUnavailableError(f"cannot read checkpoint {local} ({type(exc).__name__}: "
                                              f"{str(exc)[:160]}); it is truncated or damaged, copy it again") from None
        check_checkpoint_fits(arch, local)
        return f"local checkpoint {local}"
    if local.suffix in CHECKPOINT_SUFFIXES or os.sep in str(pretrained):
        raise WeightsUnavailableError(f"checkpoint file {local} not found; pass an existing file to --pretrained")
    return spec.check_hub_weights(pretrained)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, a (weights-only) torch pickle, or a TorchScript archive."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError (truncated, bad header) and OSError: the file is unusable
            raise WeightsUnavailableError(f"cannot read checkpoint {path} ({type(exc).__name__}: "
                                          f"{str(exc)[:160]}); it is truncated or damaged, copy it again") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as exc:
        if "TorchScript" not in str(exc) and "constants.pkl" not in str(exc) and "jit" not in str(exc).lower():
            raise WeightsUnavailableError(f"cannot read checkpoint {path}: {str(exc)[:160]}") from None
        obj = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot read checkpoint {path} safely ({type(exc).__name__}: {str(exc)[:160]}); "
            "save it as a plain state dict or safetensors"
        ) from None
    if isinstance(obj, torch.jit.ScriptModule):
        obj = obj.state_dict()
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _adapt_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Strip DataParallel's `module.` prefix, drop OpenAI's non-parameter entries, match logit_scale's shape."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for extra in ("input_resolution", "context_length", "vocab_size"):
        state.pop(extra, None)
    own = model.state_dict()
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].numel() == own["logit_scale"].numel():
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    # open_clip drops this stale BERT buffer too (factory.py load_checkpoint) when the model has none
    if "text.transformer.embeddings.position_ids" not in own:
        state.pop("text.transformer.embeddings.position_ids", None)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
