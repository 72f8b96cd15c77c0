"""Small helpers shared by the CLI commands: one-line errors and plugin loading."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

F = TypeVar("F", bound=Callable)

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


def load_results_reporting(out, dataset: str | None = None, study=None):
    """Load a results folder for a reporting command, keeping only `dataset`'s runs (a registry name or a results
    tag) when given; skipped files and run warnings go to stderr.

    `study` (from `load_study_or_fail`) keeps only that study's runs and names the ones still missing.
    """
    from fairbench.report.load import load_results, select_dataset

    loaded = load_results(out)
    for problem in loaded.problems:
        typer.echo(f"warning: {problem}", err=True)
    picked = select_dataset(loaded, dataset)
    if loaded.records and not picked.records:
        present = sorted({f"{r['dataset']['name']} (tag {r['dataset'].get('tag')})" for r in loaded.records})
        fail(f"--dataset {dataset}: no runs on it under {out}; present: {', '.join(present)}", 1)
    if study is not None:
        picked = _restrict_to_study(picked, *study)
    for note in picked.run_warnings:
        typer.echo(f"run warning: {note}", err=True)
    if loaded.unfinished_note:
        typer.echo(f"note: {loaded.unfinished_note}", err=True)
    return picked


STUDY_HELP = ("Show only this study's runs (a shipped name such as fair-moe-paper, or a .toml file) and name the "
              "ones missing.")
MISSING_SHOWN = 20  # lines of missing runs printed before "… and N more"


def load_study_or_fail(name: str):
    """(study, its jobs) for `--study NAME` of a reporting command; a one-line error if it cannot be read."""
    from fairbench.registry import PluginError, UnknownNameError, load_plugins
    from fairbench.study import StudyError, load_study, study_jobs

    try:
        study = load_study(name)
    except StudyError as exc:
        fail(str(exc))
    try:
        load_plugins()
        return study, study_jobs(study)
    except StudyError as exc:
        fail(str(exc))
    except (UnknownNameError, PluginError) as exc:
        fail(f"study {study.name} ({study.source}): {exc}; a plugin's method needs $FAIRBENCH_PLUGINS here")


def _restrict_to_study(loaded, study, jobs):
    from fairbench.report.aggregate import long_frame
    from fairbench.report.load import Loaded
    from fairbench.study import missing_runs, study_records

    records = study_records(study, loaded.records, jobs)
    missing = missing_runs(study, loaded.records, jobs)
    if missing:
        finished = len({(r["method"], r["arch"], r.get("attribute"), int(r["seed"])) for r in records})
        typer.echo(f"note: study {study.name}: {finished} of {len(jobs)} runs finished "
                   f"(protocol {study.protocol}, select {study.selection_rule}); missing:", err=True)
        for line in missing[:MISSING_SHOWN]:
            typer.echo(f"  {line}", err=True)
        if len(missing) > MISSING_SHOWN:
            typer.echo(f"  … and {len(missing) - MISSING_SHOWN} more; "
                       f"`fairbench run --study {study.name}` runs what is missing", err=True)
    if not records and loaded.records:
        typer.echo(f"warning: none of the {len(loaded.records)} finished runs belongs to study {study.name}", err=True)
    return Loaded(records, long_frame(records), loaded.problems, loaded.unfinished)


def exits_on_signal(command: F) -> F:
    """Make a command end on SIGINT/SIGTERM with one line (which run stopped, where it resumes, the command to
    continue) and exit 130/143, no traceback; claims are released and every file is whole (fairbench.runs.interrupt)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import shlex
        import sys

        from fairbench.runs.interrupt import Interrupted, catch_signals

        with catch_signals():
            try:
                return command(*args, **kwargs)
            except Interrupted as exc:
                typer.echo(exc.message(shlex.join(["fairbench", *sys.argv[1:]])), err=True)
                raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
