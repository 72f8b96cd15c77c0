"""CLIP backbones by short arch name, built with open_clip.

`b16`/`l14` are the OpenAI ViT-B/16 and ViT-L/14 the papers fine-tune (QuickGELU, as OpenAI trained them);
`tiny` is a small CLIP that trains on a CPU in seconds for demos and tests; it has no published weights, so
its default start is a CLIP pretraining on the run's dataset's pretraining set, built once
(fairbench.training.pretrain).
Any other open_clip model name is accepted as is. Weights come from open_clip's hub tags (`openai`, ...) where
the network allows, or from a local file: an open_clip/OpenAI state dict, OpenAI's TorchScript `.pt`, or a
FairCLIP-style checkpoint `{'model_state_dict': ...}`. Local pickles are read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# `default_pretrained` of archs whose default weights fairbench.training.pretrain builds (no hub has them).
PRETRAINED_HERE = "fairbench-pretraining"

# Real backbones train with the FairCLIP protocol (TrainSettings' defaults) and keep the selected weights.
PROTOCOL_TRAIN_DEFAULTS: dict[str, Any] = {"checkpoint": True}


@dataclass(frozen=True)
class ArchSpec:
    """How to build one named architecture, which weights it gets by default and how it trains by default
    (`train_defaults` override fairbench.training.trainer.TrainSettings' fields)."""

    model_name: str
    default_pretrained: str | None
    description: str
    train_defaults: dict[str, Any] = field(default_factory=lambda: dict(PROTOCOL_TRAIN_DEFAULTS))
    # FLOPs of one CLIP train step (forward + backward) at batch 32, counted with torch.utils.flop_counter on
    # v0.1; used only to warn how long a CPU run would take. None = small enough not to warn.
    step_tflop_b32: float | None = None


ARCHS: dict[str, ArchSpec] = {
    # Fine-tuning from the pretrained start (fairbench.training.pretrain), towers only under the default protocol: AdamW
    # at batch 64 with a short warm-up; the values are the ones measured to keep every seed of clip, fairclip and
    # fairmoe at test AUC ≥ 0.85 on the default synthetic data within the demo's time budget (CHANGELOG).
    "tiny": ArchSpec("fairbench-tiny", PRETRAINED_HERE,
                     "CLIP, 64 px, 3+3 layers, width 128, pretrained once on the dataset's pretraining set "
                     "(CPU demos/tests)",
                     train_defaults={"epochs": 2, "batch_size": 64, "optimizer": "adamw", "lr": 1e-3,
                                     "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.1, "warmup_steps": 30,
                                     "eval_batch_size": 512}),
    "b16": ArchSpec("ViT-B-16-quickgelu", "openai", "OpenAI CLIP ViT-B/16 (QuickGELU)", step_tflop_b32=3.96),
    "l14": ArchSpec("ViT-L-14-quickgelu", "openai", "OpenAI CLIP ViT-L/14 (QuickGELU)", step_tflop_b32=16.9),
}


def arch_train_defaults(arch: str) -> dict[str, Any]:
    """Training defaults of `arch`; any other open_clip model name trains with the protocol's."""
    spec = ARCHS.get(arch)
    return dict(spec.train_defaults if spec else PROTOCOL_TRAIN_DEFAULTS)

# In the feasibility study behind the synthetic dataset it reached zero-shot AUC 0.84–0.91 on synthetic data.
TINY_CFG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found or downloaded."""


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


@dataclass(frozen=True)
class InputSpec:
    """What the data pipeline needs from an arch (image size, tokenizer), known without building the model."""

    model_name: str
    image_size: int
    tokenize: Callable[[list[str]], torch.Tensor]
    tokenizer_key: str


def input_spec(arch: str) -> InputSpec:
    """The input pipeline of `arch`, read from its config: cheap even for ViT-L/14."""
    import open_clip

    spec = ARCHS.get(arch)
    model_name = spec.model_name if spec else arch
    if model_name == "fairbench-tiny":
        context = TINY_CFG["text_cfg"]["context_length"]
        tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=context)
        size = TINY_CFG["vision_cfg"]["image_size"]
    else:
        config = open_clip.get_model_config(model_name)
        if config is None:
            raise ValueError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)} or an open_clip model name "
                             "(see open_clip.list_models())")
        tokenizer = open_clip.get_tokenizer(model_name)
        size = config["vision_cfg"].get("image_size", 224)
        context = getattr(tokenizer, "context_length", None) or config.get("text_cfg", {}).get("context_length", 77)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return InputSpec(model_name, size, tokenizer, f"{type(tokenizer).__name__}-{context}")


def default_weights_built_here(arch: str) -> bool:
    """Whether `arch`'s default weights come from fairbench.training.pretrain (no hub has them)."""
    spec = ARCHS.get(arch)
    return spec is not None and spec.default_pretrained == PRETRAINED_HERE


def create_backbone(arch: str, pretrained: str | None = "default", device: str | torch.device = "cpu") -> Backbone:
    """Build `arch` with weights `pretrained` ("default" = the arch's usual weights; None = random init)."""
    import open_clip

    spec = ARCHS.get(arch)
    inputs = input_spec(arch)  # also validates the arch name
    model_name = inputs.model_name
    if pretrained == "default":
        pretrained = spec.default_pretrained if spec else None

    local = Path(str(pretrained)).expanduser() if pretrained else None
    if pretrained == PRETRAINED_HERE:
        raise WeightsUnavailableError(f"arch {arch!r}'s default weights are built by fairbench.training.pretrain for a "
                                      "dataset; pass their checkpoint file, or None for random init")
    if model_name == "fairbench-tiny":
        if pretrained and not local.is_file():
            raise ValueError(f"arch 'tiny' has no hub weights ({pretrained!r}); it trains from random init "
                             "(--pretrained none) or loads a local checkpoint file")
        model = open_clip.CLIP(**TINY_CFG)
    elif pretrained and not local.is_file():
        model = _from_hub(model_name, pretrained)
    else:
        with _quiet_root_logger():  # open_clip warns on the root logger that the init is random; that is the intent
            model = open_clip.create_model(model_name, pretrained=None)
    if local is not None and local.is_file():
        load_local_weights(model, model_name, local)
    model.to(device)
    mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
    return Backbone(model=model, tokenize=inputs.tokenize, tokenizer_key=inputs.tokenizer_key,
                    image_size=inputs.image_size, mean=mean, std=std, arch=arch, pretrained=pretrained)


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


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


def _from_hub(model_name: str, tag: str) -> nn.Module:
    import open_clip

    try:
        with _quiet_root_logger():  # open_clip logs its own ERROR line before raising; ours says it all
            return open_clip.create_model(model_name, pretrained=tag, require_pretrained=True)
    except Exception as exc:  # network off, unknown tag, hub error: all need the same advice
        raise _hub_error(model_name, tag, exc) from None


def _hub_error(model_name: str, tag: str, exc: BaseException) -> WeightsUnavailableError:
    detail = (str(exc).strip().splitlines() or [""])[0]
    offline = "; HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    return WeightsUnavailableError(
        f"cannot get {model_name} weights {tag!r} ({type(exc).__name__}: {detail}{offline}). Download them where "
        "the network allows, or pass --pretrained /path/to/checkpoint (.pt/.pth/.bin/.safetensors); "
        "`--arch tiny` runs without weights.")


def cpu_estimate(arch: str, jobs: list[Any]) -> str | None:
    """A warning with a lower bound on how long `jobs` (planned jobs of `arch`) take on this CPU, or None.

    Bound = the arch's counted FLOPs per step × steps ÷ the FLOP rate this CPU reaches on a large matmul (no
    train step runs faster than that); methods with group batches cost 2–3× a CLIP step on top.
    """
    import math
    import time

    spec = ARCHS.get(arch)
    if spec is None or spec.step_tflop_b32 is None or not jobs:
        return None
    a = torch.randn(1024, 1024)
    torch.mm(a, a)
    start, reps = time.perf_counter(), 8
    for _ in range(reps):
        torch.mm(a, a)
    tflops = 2 * 1024**3 * reps / (time.perf_counter() - start) / 1e12
    steps = sum(job.config["train"]["epochs"] * math.ceil(job.n_train / job.config["train"]["batch_size"])
                * job.config["train"]["batch_size"] / 32 for job in jobs)
    hours = steps * spec.step_tflop_b32 / tflops / 3600
    return (f"{len(jobs)} {arch} run(s) on a CPU: at least {hours:,.1f} h ({steps:,.0f} steps of "
            f"{spec.step_tflop_b32} TFLOP at the {tflops * 1000:.0f} GFLOP/s this CPU reaches on a matmul; "
            "group-batch methods take 2–3× more). Use a GPU, or --arch tiny for a CPU demo.")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def ensure_weights(arch: str, pretrained: str | None = "default") -> str:
    """Make sure `arch`'s weights can be had before any run folder exists: a local file must exist, a hub tag
    must be known to open_clip and downloadable (or cached, offline). Returns a short description."""
    import open_clip

    model_name = input_spec(arch).model_name
    spec = ARCHS.get(arch)
    if pretrained == "default":
        pretrained = spec.default_pretrained if spec else None
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
        return f"local checkpoint {local}"
    if local.suffix in CHECKPOINT_SUFFIXES or os.sep in str(pretrained):
        raise WeightsUnavailableError(f"checkpoint file {local} not found; pass an existing file to --pretrained")
    if model_name == "fairbench-tiny":
        raise WeightsUnavailableError(f"arch 'tiny' has no hub weights ({pretrained!r}); it trains from random init "
                                      "(--pretrained none) or loads a local checkpoint file")
    cfg = open_clip.pretrained.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise WeightsUnavailableError(f"open_clip has no weights {pretrained!r} for {model_name} (known: {tags}); "
                                      "pass one of those or --pretrained /path/to/checkpoint")
    try:
        with _quiet_root_logger():
            path = open_clip.pretrained.download_pretrained(cfg)
    except Exception as exc:
        raise _hub_error(model_name, pretrained, exc) from None
    if not path:
        raise _hub_error(model_name, pretrained, RuntimeError("no download source"))
    return f"open_clip weights {pretrained!r}"


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
    if "logit_scale" in state and "logit_scale" in own:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
