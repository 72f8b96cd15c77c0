"""fp32 islands inside mixed precision: where a reported number or a fairness loss is computed.

Under `torch.autocast`, `x.float()` does not leave the autocast region: a matmul of two fp32 tensors inside it
still runs in bf16. Zero-shot scores computed that way collapse to a few hundred distinct values and move
DPD/EOD by more than a point; a Sinkhorn cost in bf16 changes FairCLIP's gradient direction. So the code that
computes them leaves autocast explicitly (`full_precision`) and casts its inputs to fp32 (`fp32`), while the
encoders keep running in bf16.

The `fairclip` protocol reproduces the released code, which runs a plain fp16 model on a GPU (no autocast) and so
scores, normalises, computes its cross-entropy and builds its similarity distributions in fp16: inside
`native_numerics()` the islands that exist only for fairbench's own numerics step aside, while those the released
code also has (its Sinkhorn runs on `.float()` inputs, i.e. truly in fp32) stay (`always=True`). `release_fp16`
turns a model into that plain fp16 model.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

F = TypeVar("F", bound=Callable[..., Any])
_DEVICE_TYPES = ("cuda", "cpu")
_NATIVE = contextvars.ContextVar("fairbench_native_numerics", default=False)


@contextmanager
def native_numerics(enabled: bool = True) -> Iterator[None]:
    """Within the block, islands that are not `always` compute in the surrounding (autocast) precision."""
    token = _NATIVE.set(enabled)
    try:
        yield
    finally:
        _NATIVE.reset(token)


def is_native() -> bool:
    """Whether fairbench's own fp32 islands are switched off (the `fairclip` protocol's fp16 numerics)."""
    return _NATIVE.get()


@contextmanager
def full_precision(always: bool = False) -> Iterator[None]:
    """Turn off every active autocast (CUDA and CPU) for the block (unless native numerics are on and not `always`)."""
    with ExitStack() as stack:
        for device_type in _DEVICE_TYPES if always or not _NATIVE.get() else ():
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision floats to fp32; fp32/fp64 and integer tensors unchanged."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def fp32_island(fn: F | None = None, *, always: bool = False) -> Any:
    """Run `fn` outside autocast with its half-precision tensor arguments promoted to fp32 (see the module
    docstring for `always`). Use as `@fp32_island` or `@fp32_island(always=True)`."""
    if fn is None:
        return functools.partial(fp32_island, always=always)

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _NATIVE.get() and not always:
            return fn(*args, **kwargs)
        with full_precision(always=True):
            args = tuple(fp32(a) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: fp32(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapped


def release_fp16(model: nn.Module) -> None:
    """Make `model` the plain fp16 model FairCLIP fine-tunes on a GPU, in place.

    OpenAI's `clip.load` on a GPU returns the model after `clip.model.convert_weights` (FairCLIP/finetune_FairCLIP.py
    line 144 calls it again, and line 212 after every optimiser step): the weights and biases of every Linear and
    Conv layer, the attention projections and the two output projections are fp16; LayerNorms, embeddings, the
    class token and the logit scale stay fp32, and OpenAI's LayerNorm computes in fp32 and casts back
    (clip/model.py's `LayerNorm`). open_clip's `convert_weights_to_lp` converts the same parameters; its default
    `LayerNorm` would normalise an fp16 input in a mixed fp16/fp32 kernel, which rounds differently, so those
    modules become open_clip's `LayerNormFp32` (same parameters, fp32 compute, as OpenAI's). A module that holds
    Linear-like weights in its own parameters (Fair-MoE's stacked experts, which the release keeps as fp16
    `nn.Linear` experts) lists them in a `half_precision_parameters()` method; they are converted too.
    """
    from open_clip.model import convert_weights_to_lp
    from open_clip.transformer import LayerNorm, LayerNormFp32

    convert_weights_to_lp(model, torch.float16)
    for module in model.modules():
        if type(module) is LayerNorm:
            module.__class__ = LayerNormFp32
        extra = getattr(module, "half_precision_parameters", None)
        if callable(extra):
            for p in extra():
                p.data = p.data.half()
