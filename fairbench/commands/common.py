"""Small helpers shared by the CLI commands: one-line errors and plugin loading."""

from __future__ import annotations

from typing import NoReturn

import typer

PLUGIN_HELP = ("A plugin registering methods or datasets: path to a .py file or an importable module (repeatable; "
               "also $FAIRBENCH_PLUGINS).")
DATASET_HELP = "Dataset name (see `fairbench data list`; default: the default dataset there)."
RESULTS_DATASET_HELP = "Only runs on this dataset: a registry name (all its data) or a results tag (e.g. synthetic)."


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit; the message names the problem and the fix."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def load_methods(plugins: list[str] | None, methods: bool = True) -> None:
    from fairbench.registry import PluginError, load_plugins

    try:
        load_plugins(plugins or [], methods=methods)
    except PluginError as exc:
        fail(str(exc))


def load_dataset(name: str | None, plugins: list[str] | None = None, methods: bool = False):
    """Load plugins (with the built-in methods only if `methods`), then the registered dataset `name` (None: the
    default one), or fail with one line."""
    from fairbench.registry import UnknownDatasetError, get_dataset

    load_methods(plugins, methods)
    try:
        return get_dataset(name)
    except UnknownDatasetError as exc:
        fail(str(exc))


def check_select(select: str | None) -> None:
    if select not in (None, "val", "test"):
        fail(f"--select {select!r} is not one of val, test")


def load_results_reporting(out, dataset: str | None = None):
    """Load a results folder for a reporting command, keeping only `dataset`'s runs (a registry name or a results
    tag) when given; skipped files and run warnings go to stderr."""
    from fairbench.report.load import load_results, select_dataset

    loaded = load_results(out)
    for problem in loaded.problems:
        typer.echo(f"warning: {problem}", err=True)
    picked = select_dataset(loaded, dataset)
    if loaded.records and not picked.records:
        present = sorted({f"{r['dataset']['name']} (tag {r['dataset'].get('tag')})" for r in loaded.records})
        fail(f"--dataset {dataset}: no runs on it under {out}; present: {', '.join(present)}", 1)
    for note in picked.run_warnings:
        typer.echo(f"run warning: {note}", err=True)
    if loaded.unfinished_note:
        typer.echo(f"note: {loaded.unfinished_note}", err=True)
    return picked
