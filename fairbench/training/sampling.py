"""How the trainer draws an epoch's batches, and the group bookkeeping the group-aware baselines share.

Sampling is its own trainer setting (`sampling`), apart from any method's loss: kohpangwei/group_DRO #6 points out that
GroupDRO's published runs drew group-balanced batches (`--reweight_groups`) while ERM did not, so a comparison of the
two mixed the sampler with the objective. Here any method can run under any sampling, and every table row says which.

* "uniform": each epoch is one shuffled pass over the training rows (the published protocol, and what fairbench did
  before the setting existed).
* "group-balanced": each epoch draws as many rows, with replacement, each row with probability ∝ 1/n_g of its group
  g of the training attribute, so every non-empty group is equally likely per draw (torch.multinomial, as
  `WeightedRandomSampler` draws; MEDFAIR `datasets/utils.py` lines 116-126 and group_DRO `dro_dataset.py` lines
  43-69 give each row weight N/n_g or 1/n_g, the same distribution). Rows whose attribute value is unknown are not
  drawn.
* "method" (the default): what the method asks for (`Method.sample_weights`; built-ins: uniform, except `resample`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fairbench.training.settings import SAMPLINGS  # noqa: F401 - the setting's values, defined with its range

if TYPE_CHECKING:
    from fairbench.method import Method

UNIFORM = "uniform"
GROUP_BALANCED = "group-balanced"


class EmptyGroupError(ValueError):
    """A group of the training attribute has no training rows, so a group-aware method cannot weight it."""


def group_counts(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Training rows per group code 0..n_groups-1 (unknown values, −1, are not counted)."""
    known = groups[groups >= 0].long()
    return torch.bincount(known, minlength=n_groups)[:n_groups]


def require_every_group(counts: torch.Tensor, method: str, attribute: str | None,
                        names: dict[int, str] | None = None) -> None:
    """Refuse, before any step, a training attribute one of whose groups has no training rows: inverse-frequency
    weights and GroupDRO's per-group loss are undefined for it, and the run would silently train on fewer groups."""
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        names = names or {}
        which = ", ".join(repr(names.get(g, str(g))) for g in empty)
        raise EmptyGroupError(f"method {method!r} on attribute {attribute!r}: group(s) {which} have no training rows; "
                              "it needs every group in the training split (train on another attribute, or use a "
                              "method that does not weight groups)")


def group_balanced_weights(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per-row draw weights 1/n_g (0 for an unknown value): each non-empty group equally likely per draw."""
    counts = group_counts(groups, n_groups).double()
    table = torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))
    return torch.where(groups >= 0, table[groups.long().clamp(min=0)], torch.zeros(groups.shape, dtype=torch.double))


def inverse_frequency(counts: torch.Tensor) -> torch.Tensor:
    """Loss weight of each group, N / (G · n_g) over the G groups: the weighted mean (1/N) Σ_i w_i ℓ_i is then
    Σ_g (1/G) · mean_{i∈g} ℓ_i, each group counting equally (group-balanced sampling has the same expectation)."""
    counts = counts.double()
    return counts.sum() / (counts.numel() * counts)


def epoch_order(n: int, weights: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """An epoch's row order: a permutation (weights None), or n draws with replacement ∝ `weights`."""
    if weights is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(weights.double(), n, replacement=True, generator=generator)


def resolved_sampling(setting: str, method: type[Method] | Method) -> str:
    """The sampling a run uses, as tables name it: the setting, or for "method" the method's own `sampling`."""
    return method.sampling if setting == "method" else setting


def draw_weights(setting: str, method: Method, groups: torch.Tensor | None,
                 labels: torch.Tensor) -> torch.Tensor | None:
    """The training rows' draw weights for `setting` (None: a shuffled pass). Group-balanced sampling needs a training
    attribute and refuses a group with no training rows, as the group-weighting methods do."""
    if setting == "method":
        return method.sample_weights(groups, labels)
    if setting == UNIFORM:
        return None
    if groups is None:
        raise ValueError(f"sampling={setting} draws by the groups of a training attribute, but method "
                         f"{method.name!r} trains on none; use a method that takes --attr, or sampling=uniform")
    require_every_group(group_counts(groups, method.n_groups), method.name, method.attribute, method.group_names)
    return group_balanced_weights(groups, method.n_groups)
