"""The contract between the shared trainer and a fairness method.

A method contributes a model (usually the backbone, possibly with layers swapped in) and named loss
terms; the trainer owns everything else (optimiser, precision, seeding, epochs, selection). A method
never sees validation or test data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
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
      Settings        a dataclass of hyperparameters, each settable with `--set name=value`; a field whose
                      default is a dataclass groups settings, set as `--set group.name=value`.

    Hooks the trainer calls besides `loss_terms`: `build` (the model to train), `trainable_parameters`
    (what the optimiser updates), `parameter_groups` (extra optimiser groups with their own learning rate, e.g. an
    adversary head), `prepare` (the training split's group codes and labels, once, before the first step),
    `sample_weights` (how the trainer draws batches when the `sampling` setting is "method"), `group_batch_size`
    (the size of each group batch), `step_stats` and `probe_parameters` (parameter sets the per-epoch gradient
    probe reports separately).

      sampling        how tables name the draws `sample_weights` makes ("uniform" for the default shuffle).
      reference       the paper (and released code) its update rule follows; `fairbench methods NAME` prints it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    uses_attribute: ClassVar[bool] = False
    group_batches: ClassVar[bool] = False
    sampling: ClassVar[str] = "uniform"
    reference: ClassVar[str] = ""
    # How the method uses the model (FairMedFM's usage modes): "fine-tune" (the trainer updates the model), or a
    # mode whose `fit` replaces the trainer ("zero-shot", "linear-probe"); tables never pool two modes and label
    # every row with its mode (a trainer-level adapter turns "fine-tune" into "lora").
    mode: ClassVar[str] = "fine-tune"
    # The result does not depend on the seed (zero-shot scoring of fixed weights): one run per arch and attribute,
    # whatever --seeds says, shown in tables as a single run rather than a mean over seeds.
    seed_independent: ClassVar[bool] = False

    @dataclass
    class Settings:
        pass

    def __init__(self, settings: Any = None, attribute: str | None = None, n_groups: int = 0) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self.attribute = attribute
        self.n_groups = n_groups
        self.group_names: dict[int, str] = {}  # the training attribute's {code: name}, for messages

    def prepare(self, groups: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Called once before the first step with the TRAINING split's attribute codes (−1 = unknown; None without a
        training attribute) and labels, so a method can count its groups or refuse an attribute before training.
        Default: nothing."""

    def sample_weights(self, groups: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor | None:
        """Per-row draw weights of the training split for an epoch drawn with replacement (see
        fairbench.training.sampling), or None for the default shuffled pass; used when the trainer's `sampling`
        setting is "method", and named in tables by `sampling`."""
        return None

    def parameter_groups(self, model: nn.Module) -> list[tuple[list[nn.Parameter], float]]:
        """Extra optimiser parameter groups as (parameters, learning-rate multiplier of the trainer's lr), for
        parameters NOT in `trainable_parameters` (a new head that learns faster than the fine-tuned backbone).
        The trainer's warm-up schedule scales them too; the protocol's frozen parts do not apply to them."""
        return []

    def build(self, model: nn.Module) -> nn.Module:
        """Return the model to train, e.g. the backbone with layers swapped in. Default: unchanged."""
        return model

    @classmethod
    def check_arch(cls, arch: Any) -> None:
        """Raise SettingsError (one line) if this method cannot use `arch` (a fairbench.models.archs.Arch), at
        planning, before any run folder exists. Default: every arch works."""

    def check_training_labels(self, labels: Any) -> None:
        """Raise SettingsError (one line) if the training labels (a numpy array) cannot serve this method (e.g. a
        classifier on one class); called before the run folder is made. Default: any labels do."""

    def fit(self, model: nn.Module, context: Any) -> Any:
        """Fit and score without the shared trainer, for a mode that does not fine-tune: return a
        fairbench.training.trainer.TrainOutcome from `context` (fairbench.training.context.FitContext). Default:
        None, and the shared trainer fine-tunes the model with `loss_terms`."""
        return None

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

    def probe_parameters(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Named parameter sets on which the trainer's per-epoch gradient probe (fairbench.training.probe) reports
        each loss term's share separately, besides all trainable parameters: where a term is meant to act (Fair-MoE:
        its gates). Default: none."""
        return {}

    @classmethod
    def settings_from(cls, overrides: dict[str, str]) -> Any:
        """Build `Settings` from `--set` strings, converting each to its field's type."""
        return parse_settings(cls.Settings, overrides, owner=f"method {cls.name!r}")


def parse_settings(settings_cls: type, overrides: dict[str, str], owner: str) -> Any:
    """Instantiate a settings dataclass from string overrides, with one-line errors for bad keys/values.

    A field whose default is itself a dataclass is a group of settings, set leaf by leaf with dotted keys
    (`group.field`); unset leaves keep the group's default, so a method's own group defaults survive an override.
    """
    return _apply_overrides(settings_cls, None, overrides, owner, prefix="")


def _apply_overrides(settings_cls: type, base: Any, overrides: dict[str, str], owner: str, prefix: str) -> Any:
    """`settings_cls(**overrides)`, or `base` with them replaced; `prefix` is the dotted path down to this level."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    defaults = {name: field_default(f) if base is None else getattr(base, name) for name, f in fields.items()}
    values: dict[str, Any] = {}
    groups: dict[str, dict[str, str]] = {}
    for key, raw in overrides.items():
        head, dot, rest = key.partition(".")
        group = head in fields and is_settings_group(defaults[head])
        if head not in fields or (dot and not group):
            known = [prefix + k for k in flat_settings(base if base is not None else settings_cls)]
            raise SettingsError(f"{owner} has no setting {prefix + key!r}{did_you_mean(prefix + key, known)}; "
                                f"settable: {', '.join(sorted(known)) or '(none)'}")
        if group and not dot:
            example = next(iter(flat_settings(defaults[head])), "field")
            raise SettingsError(f"{owner} setting {prefix + key!r} is a group; set its fields one by one, e.g. "
                                f"{prefix + key}.{example}=...")
        if group:
            groups.setdefault(head, {})[rest] = raw
        else:
            values[head] = convert_value(raw, defaults[head], f"{owner} setting {prefix + key!r}")
    for head, sub in groups.items():
        values[head] = _apply_overrides(type(defaults[head]), defaults[head], sub, owner, prefix=f"{prefix}{head}.")
    return settings_cls(**values) if base is None else dataclasses.replace(base, **values)


def is_settings_group(value: Any) -> bool:
    """A nested settings dataclass (instance), whose fields are set as `name.field`."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def flat_settings(settings: Any) -> dict[str, Any]:
    """Every leaf setting under its `--set` key (`group.field` inside nested groups) with its value.

    Given a settings class, the values are its defaults (without instantiating it); given an instance, its own.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = field_default(f) if isinstance(settings, type) else getattr(settings, f.name)
        if is_settings_group(value):
            out.update({f"{f.name}.{k}": v for k, v in flat_settings(value).items()})
        else:
            out[f.name] = value
    return out


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """A hint for a flat key that names a nested leaf (`capacity`, or `fol_ei` for `fol.ei`); empty if none."""
    hits = sorted(k for k in known if "." in k and key in (k.rsplit(".", 1)[1], k.replace(".", "_")))
    return f" (did you mean {' or '.join(repr(h) for h in hits)}?)" if hits else ""


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
    """A settings dataclass as a plain JSON-friendly dict: nested groups become nested dicts, tuples lists."""
    return _plain(dataclasses.asdict(settings))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class ContrastiveFineTune(Method):
    """CLIP's symmetric contrastive loss on a batch's image-text pairs and nothing else: the objective of plain
    fine-tuning (the built-in `clip` method registers a subclass) and of the pretraining that gives `tiny` its start.
    Subclass it for a method that adds terms to the contrastive one."""

    def loss_terms(self, model: nn.Module, batch: Batch, group_batches: dict[int, Batch]) -> dict[str, torch.Tensor]:
        from fairbench.training.losses import clip_contrastive_loss

        image, text = encode_batch(model, batch)
        return {"contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp())}


def encode_batch(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features of a batch's pairs (the input of every CLIP-style loss)."""
    import torch.nn.functional as F

    image = F.normalize(model.encode_image(batch.images), dim=-1)
    text = F.normalize(model.encode_text(batch.tokens), dim=-1)
    return image, text
