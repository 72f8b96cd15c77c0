"""Small helpers shared by the CLI commands: one-line errors and plugin loading."""

from __future__ import annotations

from typing import NoReturn

import typer

PLUGIN_HELP = "A method plugin: path to a .py file or an importable module (repeatable; also $FAIRBENCH_PLUGINS)."


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit; the message names the problem and the fix."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def load_methods(plugins: list[str] | None) -> None:
    from fairbench.registry import PluginError, load_plugins

    try:
        load_plugins(plugins or [])
    except PluginError as exc:
        fail(str(exc))
