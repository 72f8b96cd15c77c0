"""Where a job's split tensors live while it trains, and how a batch reaches the training device.

On a GPU the step is short enough that gathering a batch from the memory-mapped cache on the CPU and copying it
over unpinned shows up in the epoch time. So a split whose tensors fit in a share of the free GPU memory moves to
the GPU once per job and batches are gathered (and normalised) there; a split that does not fit is gathered on the
CPU into pinned memory and copied without blocking, one step ahead of its use. On a CPU nothing moves: batches are
gathered exactly as before. Every placement gives the same batches, element for element.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Callable

    from fairbench.method import Batch

PLACEMENTS = ("host", "pinned", "device")
DEVICE_DATA_ENV = "FAIRBENCH_DEVICE_DATA"  # a fraction in [0, 1] that overrides the trainer setting; 0 = never


@dataclass
class SplitData:
    """The tensors the trainer needs from one split (uint8 images, tokens, labels, one attribute's groups)."""

    images: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None
    attributes: dict[str, torch.Tensor] | None = None  # every attribute's codes (selection rules read them)


def compact_images(images: torch.Tensor) -> torch.Tensor:
    """The stored images: grayscale expanded to three channels (stride 0) is one channel of storage."""
    if images.dim() == 4 and images.shape[1] > 1 and images.stride(1) == 0:
        return images[:, :1]
    return images


def split_nbytes(data: SplitData) -> int:
    """Bytes the split takes on the device (images counted as stored, not as expanded)."""
    tensors = [compact_images(data.images), data.tokens, data.labels]
    if data.groups is not None:
        tensors.append(data.groups)
    return sum(t.numel() * t.element_size() for t in tensors)


def device_data_fraction(setting: float) -> float:
    """The share of free GPU memory the training data may take: the environment variable wins over the setting."""
    raw = os.environ.get(DEVICE_DATA_ENV, "").strip()
    if not raw:
        return setting
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{DEVICE_DATA_ENV}={raw!r} is not a number; set a fraction such as 0.5, or 0 to keep "
                         "the data on the host") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{DEVICE_DATA_ENV}={raw!r} must be a fraction between 0 and 1 (0 keeps data on the host)")
    return value


def choose_placement(nbytes: int, device: torch.device, fraction: float, free_bytes: int | None = None) -> str:
    """'device' when `nbytes` fits in `fraction` of the free GPU memory, 'pinned' on a GPU otherwise, 'host' on
    anything else. `free_bytes` defaults to what CUDA reports (injected by tests)."""
    if device.type != "cuda":
        return "host"
    if fraction <= 0:
        return "pinned"
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return "device" if nbytes <= fraction * free_bytes else "pinned"


@dataclass
class Feeder:
    """Gathers batches of one split by index into model input on `device`, from wherever the split lives."""

    data: SplitData
    device: torch.device
    normalize: Callable[[torch.Tensor], torch.Tensor]
    placement: str = "host"

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        self.expanded = compact_images(self.data.images) is not self.data.images
        if self.placement == "device":
            d = self.data
            self.data = SplitData(images=compact_images(d.images).to(self.device), tokens=d.tokens.to(self.device),
                                  labels=d.labels.to(self.device),
                                  groups=d.groups.to(self.device) if d.groups is not None else None)

    def indices(self, idx: torch.Tensor) -> torch.Tensor:
        """`idx` where gathering happens (a non-blocking copy of a CPU index tensor when the split is on the GPU)."""
        if self.placement != "device" or idx.device == self.device:
            return idx
        return idx.pin_memory().to(self.device, non_blocking=True)

    def batch(self, idx: torch.Tensor) -> Batch:
        from fairbench.method import Batch

        if self.placement == "device":
            idx = self.indices(idx)
            move = lambda t: t  # noqa: E731 - already there
        elif self.placement == "pinned":
            move = lambda t: t.pin_memory().to(self.device, non_blocking=True)  # noqa: E731
        else:
            move = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        d = self.data
        images = move(compact_images(d.images)[idx])  # one channel of a grayscale image is gathered and moved
        if self.expanded:
            images = images.expand(-1, 3, -1, -1)
        groups = move(d.groups[idx]) if d.groups is not None else None
        return Batch(images=self.normalize(images), tokens=move(d.tokens[idx]), labels=move(d.labels[idx]),
                     groups=groups)
