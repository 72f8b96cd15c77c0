"""`fairbench methods`: what can be run, what each method trains on and what it lets you set."""

from __future__ import annotations

import typer

from fairbench.commands.common import PLUGIN_HELP, load_methods


def methods(
    pattern: str = typer.Argument("*", help="Shell-style wildcard, e.g. 'fairmoe*'."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    settings: bool = typer.Option(False, "--settings", "-s", help="Also list each method's settable values."),
) -> None:
    """List registered methods (built-in and plugins) with a one-line description."""
    from rich.console import Console
    from rich.table import Table

    from fairbench.method import flat_settings
    from fairbench.registry import get_method, list_methods

    load_methods(plugin)
    names = list_methods(pattern)
    table = Table(title=f"fairbench methods ({len(names)})")
    table.add_column("method", style="bold")
    table.add_column("trains on attribute")
    table.add_column("description")
    if settings:
        table.add_column("settings (--set name=value)")
    for name in names:
        cls = get_method(name)
        row = [name + (f" (alias {', '.join(cls.aliases)})" if cls.aliases else ""),
               "yes" if cls.uses_attribute else "no", cls.description]
        if settings:
            row.append(", ".join(f"{k}={v!r}" for k, v in flat_settings(cls.Settings).items()) or "-")
        table.add_row(*row)
    Console().print(table)
