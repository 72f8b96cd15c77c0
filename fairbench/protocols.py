"""Training protocols: a named bundle of trainer settings that fixes how every method is fine-tuned.

A protocol says which parameters train, in what precision, and how the reported epoch is selected; it is one
setting (`fairbench run --protocol NAME`), recorded in each run's config (so in its hash and run folder) and
in every table title, and tables never pool runs of two protocols. The core's default, `fairbench`, is defined
here; a paper's protocol registers from where its method lives (`methods/fairclip.py` registers `fairclip`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fairbench.registry import PROTOCOLS

DEFAULT_PROTOCOL = "fairbench"
# Runs written before protocols existed trained every parameter; tables label them with this name.
LEGACY_PROTOCOL = "v0.1-all-parameters"


@dataclass(frozen=True)
class Protocol:
    """`train` overrides fairbench.training.settings.TrainSettings (after the arch's defaults, before --set);
    `towers_only` trains only the arch's two towers (the arch names what else stays frozen, `Arch.frozen`);
    `differences` documents, per aspect, how it departs from the default protocol."""

    name: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)
    differences: dict[str, str] = field(default_factory=dict)
    towers_only: bool = False


def register_protocol(protocol: Protocol) -> Protocol:
    return PROTOCOLS.add(protocol)


def get_protocol(name: str) -> Protocol:
    """The protocol called `name` (load plugins first for non-core ones); a one-line error lists the valid names."""
    return PROTOCOLS.get(name)


def list_protocols() -> list[str]:
    return PROTOCOLS.names()


def protocol_of(record: dict[str, Any]) -> str:
    """The protocol a result was trained under (older results predate protocols)."""
    return (record.get("config") or {}).get("protocol") or LEGACY_PROTOCOL


register_protocol(Protocol(
    name=DEFAULT_PROTOCOL,
    description="FairCLIP's fine-tuning (same trainable subset and hyperparameters) with validation selection, "
                "fp32 master weights under bf16 autocast on a GPU, and fp32 fairness numerics",
    train={"select": "val", "ties": "earlier", "precision": "auto"},
    towers_only=True,
    differences={
        "model selection": "best validation AUC; ties keep the earlier epoch",
        "group batches": "always full: a group's pool is reshuffled when fewer than a batch of it remain",
        "weights and compute": "fp32 weights; bf16 autocast on a GPU, fp32 on a CPU",
        "scores and fairness losses": "fp32 outside autocast",
    },
))
