"""`fairbench methods`: what can be run, what each method trains on and what it lets you set.

Settings print as plain `name = value` lines, one per setting, never inside a table cell: a terminal
that is too narrow wraps a line but never cuts a value, and a nested settings dataclass shows as
dotted names (`moe.capacity = 0.8`), exactly what `--set` takes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from fairbench.commands.common import PLUGIN_HELP, fail, load_plugins_or_fail

_WILDCARDS = "*?["


def methods(
    pattern: str = typer.Argument("*", help="A method name (shows its settings in full) or a shell-style "
                                            "wildcard, e.g. 'fairmoe*'."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    settings: bool = typer.Option(False, "--settings", help="List every setting (`name = value`, settable with "
                                                            "--set name=value) of each method and of the trainer."),
) -> None:
    """List registered methods (built-in and plugins); with --settings or one NAME, every setting in full."""
    from fairbench.registry import UnknownMethodError, get_method, list_methods

    load_plugins_or_fail(plugin)
    if not any(ch in pattern for ch in _WILDCARDS):
        try:
            names = [get_method(pattern).name]
        except UnknownMethodError as exc:
            fail(str(exc))
        settings = True
    else:
        names = list_methods(pattern)
        if not names:
            fail(f"pattern {pattern!r} matches no registered method; run `fairbench methods` to list them")
    if not settings:
        _print_table(names)
        typer.echo("Settings: `fairbench methods NAME` (one method) or `--settings` (all).")
        return
    for name in names:
        typer.echo("\n".join(method_block(get_method(name))) + "\n")
    typer.echo("\n".join(trainer_block()))


def _print_table(names: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from fairbench.registry import get_method

    table = Table(title=f"fairbench methods ({len(names)})")
    table.add_column("method", style="bold", overflow="fold", no_wrap=True)
    table.add_column("trains on attribute")
    table.add_column("description")
    for name in names:
        cls = get_method(name)
        label = name + (f" (alias {', '.join(cls.aliases)})" if cls.aliases else "")
        table.add_row(label, "yes" if cls.uses_attribute else "no", cls.description)
    Console().print(table)


def value_text(value: Any) -> str:
    """A default as you would type it after `--set name=`: tuples comma-separated, strings unquoted."""
    if isinstance(value, (tuple, list)):
        return ",".join(value_text(v) for v in value) if value else "(none)"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value) if isinstance(value, float) else str(value)


def _flat(name: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _flat(f"{name}.{f.name}", getattr(value, f.name), out)
    else:
        out.append((name, value))


def setting_defaults(settings_cls: type) -> list[tuple[str, Any]]:
    """(dotted name, default) of every field, nested settings dataclasses flattened to `outer.inner`."""
    from fairbench.method import field_default

    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(settings_cls):
        _flat(f.name, field_default(f), out)
    return out


def setting_values(settings: Any) -> list[tuple[str, Any]]:
    """(dotted name, value) of a settings instance, flattened like setting_defaults."""
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(settings):
        _flat(f.name, getattr(settings, f.name), out)
    return out


def method_block(cls: type) -> list[str]:
    """One method: a heading line, its description, then one `name = value` line per setting."""
    alias = f" (alias {', '.join(cls.aliases)})" if cls.aliases else ""
    trains = "trains once per protected attribute" if cls.uses_attribute else "trains on no attribute"
    lines = [f"{cls.name}{alias}: {trains}", f"  {cls.description}"]
    if getattr(cls, "reference", ""):
        lines.append(f"  reference: {cls.reference}")
    if getattr(cls, "sampling", "uniform") != "uniform":
        lines.append(f"  sampling: {cls.sampling} (the trainer setting sampling=uniform turns it off)")
    rows = setting_defaults(cls.Settings)
    if not rows:
        return lines + ["  settings: none (only the trainer's)"]
    return lines + ["  settings (--set name=value):"] + [f"    {name} = {value_text(v)}" for name, v in rows]


def trainer_block() -> list[str]:
    """The trainer's settings under the default protocol with each arch's default; `[arch: value]` where an arch
    differs; then what each other protocol changes."""
    from fairbench.models.archs import list_archs
    from fairbench.protocols import DEFAULT_PROTOCOL, list_protocols
    from fairbench.training.settings import TrainSettings, resolve_train_settings

    archs = list_archs()
    per_arch = {arch: dict(setting_values(resolve_train_settings(arch, DEFAULT_PROTOCOL))) for arch in archs}
    lines = ["trainer: used by every method (--set name=value; prefix train. on a name clash)",
             f"  under --protocol {DEFAULT_PROTOCOL}, default of most archs ({', '.join(archs)}); [arch: value] where "
             "an arch differs:"]
    for name, _ in setting_defaults(TrainSettings):
        texts = {arch: value_text(values[name]) for arch, values in per_arch.items()}
        counts = list(texts.values())
        main = max(dict.fromkeys(counts), key=counts.count)
        others = [f"{arch}: {text}" for arch, text in texts.items() if text != main]
        lines.append(f"    {name} = {main}" + (f"  [{'; '.join(others)}]" if others else ""))
    reference = archs[-1]  # an arch with the protocol defaults (b16/l14 differ from tiny), so only the protocol shows
    base = dict(setting_values(resolve_train_settings(reference, DEFAULT_PROTOCOL)))
    for name in list_protocols():
        if name == DEFAULT_PROTOCOL:
            continue
        changed = [f"{k} = {value_text(v)}" for k, v in setting_values(resolve_train_settings(reference, name))
                   if v != base[k]]
        lines.append(f"  --protocol {name} sets: " + ("; ".join(changed) or "nothing else"))
    return lines
