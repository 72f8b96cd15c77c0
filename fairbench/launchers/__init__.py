"""Launchers execute planned jobs; pick one by name (`fairbench run --launcher NAME`)."""

from __future__ import annotations

from fairbench.launchers.base import Launcher, Reporter
from fairbench.launchers.local import LocalLauncher, SequentialLauncher
from fairbench.launchers.slurm import SlurmLauncher

LAUNCHERS: dict[str, type[Launcher]] = {LocalLauncher.name: LocalLauncher, SlurmLauncher.name: SlurmLauncher}


def get_launcher(name: str, **options) -> Launcher:
    """An instance of the launcher called `name`; a one-line error lists the valid names."""
    try:
        cls = LAUNCHERS[name]
    except KeyError:
        raise ValueError(f"unknown launcher {name!r}; use one of {', '.join(LAUNCHERS)}") from None
    return cls(**options)


__all__ = ["LAUNCHERS", "Launcher", "LocalLauncher", "Reporter", "SequentialLauncher", "SlurmLauncher", "get_launcher"]
