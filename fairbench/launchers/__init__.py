"""Launchers execute planned jobs; pick one by name (`fairbench run --launcher NAME`, `fairbench list launchers`).

Importing this package registers the built-in launchers (`local`, `slurm`), exactly as a plugin registers its own.
"""

from __future__ import annotations

from fairbench.launchers.base import Launcher, LauncherOption, Reporter, register_launcher
from fairbench.launchers.local import LocalLauncher
from fairbench.launchers.slurm import SlurmLauncher
from fairbench.registry import LAUNCHERS


def get_launcher(name: str, **options) -> Launcher:
    """An instance of the launcher called `name` built with `options` (its constructor's keywords); an unknown
    name is a one-line UnknownNameError (a ValueError) listing the registered ones."""
    return LAUNCHERS.get(name)(**options)


__all__ = ["Launcher", "LauncherOption", "LocalLauncher", "Reporter", "SlurmLauncher", "get_launcher",
           "register_launcher"]
