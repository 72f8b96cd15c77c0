"""`fairbench list [KIND]`: what is registered of every named kind (built-in and plugins), one line each."""

from __future__ import annotations

import typer

from fairbench.commands.common import PLUGIN_OPTION, fail, load_plugins_or_fail


def list_(
    kind: str = typer.Argument(None, help="methods, datasets, metrics, launchers, layouts, archs, protocols or "
                               "select-rules (default: every kind)."),
    plugin: list[str] = PLUGIN_OPTION,
) -> None:
    """Registered names with a one-line description: every kind, or one kind."""
    from fairbench.registry import REGISTRIES, UnknownNameError, registry_of

    load_plugins_or_fail(plugin)
    if kind is not None:
        try:
            kinds = [registry_of(kind).plural]
        except UnknownNameError as exc:
            fail(str(exc))
    else:
        kinds = list(REGISTRIES)
    for plural in kinds:
        entries = registry_of(plural).describe()
        typer.echo(f"{plural} ({len(entries)}):")
        width = max((len(name) for name, _ in entries), default=0)
        for name, description in entries:
            typer.echo(f"  {name:{width}}  {description}")
