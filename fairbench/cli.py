"""The `fairbench` command line: a thin Typer shell over the library.

Command modules are imported here, but they import torch/pandas only inside command bodies, so
`fairbench --help` answers without loading torch. Each command is a `LiveCommand` (typer reads its options when it
builds the CLI, so `run` offers every registered launcher's options) and a `ListingCommand` (its help lists what is
registered when it is shown); `main` loads the plugins first (--plugin, $FAIRBENCH_PLUGINS, entry points).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="fairbench",
    help="Train and evaluate CLIP-style models for accuracy (AUC) and fairness (ES-AUC, DPD, EOD, per-group AUC) "
    "on a registered dataset (`fairbench data list`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from fairbench import __version__

        typer.echo(f"fairbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the fairbench version and exit."),
) -> None:
    """Options of `fairbench` itself (the app's help text is the one given to typer.Typer)."""


# (module, attribute, name, kind): kind "command" registers a function, "group" a Typer sub-app.
_COMMANDS: list[tuple[str, str, str, str]] = [
    ("fairbench.commands.run", "run", "run", "command"),
    ("fairbench.commands.table", "table", "table", "command"),
    ("fairbench.commands.methods", "methods", "methods", "command"),
    ("fairbench.commands.metrics", "metrics", "metrics", "command"),
    ("fairbench.commands.compare", "compare", "compare", "command"),
    ("fairbench.commands.plot", "plot", "plot", "command"),
    ("fairbench.commands.report", "report", "report", "command"),
    ("fairbench.commands.status", "status", "status", "command"),
    ("fairbench.commands.export", "export", "export", "command"),
    ("fairbench.commands.listing", "list_", "list", "command"),
    ("fairbench.commands.data", "app", "data", "group"),
]


def _register() -> None:
    from fairbench.commands.common import ListingCommand, LiveCommand

    for module_name, attr, name, kind in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet
                continue
            raise
        target = getattr(module, attr)
        if kind == "group":
            app.add_typer(target, name=name)
        else:
            app.command(name, cls=ListingCommand)(LiveCommand(target, getattr(module, "EXTRA_OPTIONS", None)))


_register()


def main() -> None:
    import sys

    import typer

    from fairbench.commands.common import preload_plugins

    try:  # plugins load before the app runs (their names belong in --help), so their one-line error exits here
        preload_plugins(sys.argv[1:])
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    app()


if __name__ == "__main__":
    main()
