"""Small helpers shared by the CLI commands: one-line errors and plugin loading."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

F = TypeVar("F", bound=Callable)

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


def check_select(select: str | None) -> None:
    if select not in (None, "val", "test"):
        fail(f"--select {select!r} is not one of val, test")


def load_results_reporting(out):
    """Load a results folder for a reporting command; skipped files and run warnings go to stderr."""
    from fairbench.report.load import load_results

    loaded = load_results(out)
    for problem in loaded.problems:
        typer.echo(f"warning: {problem}", err=True)
    for note in loaded.run_warnings:
        typer.echo(f"run warning: {note}", err=True)
    if loaded.unfinished_note:
        typer.echo(f"note: {loaded.unfinished_note}", err=True)
    return loaded


def exits_on_signal(command: F) -> F:
    """Make a command end on SIGINT/SIGTERM with one line (which run stopped, where it resumes, the command to
    continue) and exit 130/143, no traceback; claims are released and every file is whole (fairbench.interrupt)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import shlex
        import sys

        from fairbench.interrupt import Interrupted, catch_signals

        with catch_signals():
            try:
                return command(*args, **kwargs)
            except Interrupted as exc:
                typer.echo(exc.message(shlex.join(["fairbench", *sys.argv[1:]])), err=True)
                raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
