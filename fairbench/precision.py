"""fp32 islands inside mixed precision: where a reported number or a fairness loss is computed.

Under `torch.autocast`, `x.float()` does not leave the autocast region: a matmul of two fp32 tensors inside it
still runs in bf16. Zero-shot scores computed that way collapse to a few hundred distinct values and move
DPD/EOD by more than a point; a Sinkhorn cost in bf16 changes FairCLIP's gradient direction. So the code that
computes them leaves autocast explicitly (`full_precision`) and casts its inputs to fp32 (`fp32`), while the
encoders keep running in bf16.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
_DEVICE_TYPES = ("cuda", "cpu")


@contextmanager
def full_precision() -> Iterator[None]:
    """Turn off every active autocast (CUDA and CPU) for the block."""
    with ExitStack() as stack:
        for device_type in _DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision floats to fp32; fp32/fp64 and integer tensors unchanged."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def fp32_island(fn: F) -> F:
    """Run `fn` outside autocast with its half-precision tensor arguments promoted to fp32."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with full_precision():
            args = tuple(fp32(a) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: fp32(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
