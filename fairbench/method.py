"""The contract between the shared trainer and a fairness method.

A method contributes a model (usually the backbone, possibly with layers swapped in) and named loss
terms; the trainer owns everything else (optimiser, precision, seeding, epochs, selection). A method
never sees validation or test data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from torch import nn


@dataclass
class Batch:
    """One training batch, already on the training device.

    `images` are normalised float tensors (B, 3, H, W); `tokens` are token ids (B, L); `groups` holds the
    training attribute's codes (−1 = unknown) or is None when the method trains on no attribute.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None


class SettingsError(ValueError):
    """A `--set key=value` that the method or trainer does not have, or a value of the wrong type."""


class Method:
    """Base class of every method; subclass it and decorate with `fairbench.register_method`.

    Class attributes:
      uses_attribute  the method trains on a protected attribute, so it runs once per attribute.
      group_batches   the trainer passes one extra batch per group of that attribute each step.
      Settings        a dataclass of hyperparameters, each settable with `--set name=value`.

    Hooks the trainer calls besides `loss_terms`: `build` (the model to train), `trainable_parameters`
    (what the optimiser updates), `group_batch_size` (the size of each group batch) and `step_stats`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    uses_attribute: ClassVar[bool] = False
    group_batches: ClassVar[bool] = False

    @dataclass
    class Settings:
        pass

    def __init__(self, settings: Any = None, attribute: str | None = None, n_groups: int = 0) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.attribute = attribute
        self.n_groups = n_groups

    def build(self, model: nn.Module) -> nn.Module:
        """Return the model to train, e.g. the backbone with layers swapped in. Default: unchanged."""
        return model

    def trainable_parameters(self, model: nn.Module) -> Iterable[nn.Parameter]:
        """The parameters the optimiser updates. Default: every parameter that requires a gradient; a protocol
        that fine-tunes part of the model (FairCLIP trains only the two towers) narrows it here."""
        return (p for p in model.parameters() if p.requires_grad)

    def group_batch_size(self) -> int | None:
        """Pairs in each group batch when `group_batches` is set; None = the trainer's batch size."""
        return None

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        """Named scalar losses for one step; the trainer sums them and logs each."""
        raise NotImplementedError

    def step_stats(self, model: nn.Module) -> dict[str, float]:
        """Optional diagnostics logged per epoch (e.g. expert load). Default: none."""
        return {}

    @classmethod
    def settings_from(cls, overrides: dict[str, str]) -> Any:
        """Build `Settings` from `--set` strings, converting each to its field's type."""
        return parse_settings(cls.Settings, overrides, owner=f"method {cls.name!r}")


def parse_settings(settings_cls: type, overrides: dict[str, str], owner: str) -> Any:
    """Instantiate a settings dataclass from string overrides, with one-line errors for bad keys/values."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        field = fields.get(key)
        if field is None:
            known = ", ".join(sorted(fields)) or "(none)"
            raise SettingsError(f"{owner} has no setting {key!r}; settable: {known}")
        values[key] = convert_value(raw, field_default(field), f"{owner} setting {key!r}")
    return settings_cls(**values)


def field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def convert_value(raw: str, default: Any, what: str) -> Any:
    """Convert a command-line string to the type of `default` (bool, int, float, str, tuple of numbers)."""
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            parts = [p for p in raw.replace("(", "").replace(")", "").split(",") if p.strip()]
            kind = type(default[0]) if default else float
            return tuple(kind(p) for p in parts)
    except ValueError:
        raise SettingsError(f"{what} expects a {type(default).__name__}, got {raw!r}") from None
    return raw


def settings_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a plain JSON-friendly dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def encode_batch(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features of a batch's pairs (the input of every CLIP-style loss)."""
    import torch.nn.functional as F

    image = F.normalize(model.encode_image(batch.images), dim=-1)
    text = F.normalize(model.encode_text(batch.tokens), dim=-1)
    return image, text
