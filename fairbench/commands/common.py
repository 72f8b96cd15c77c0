"""What the CLI commands share: one-line errors, plugin loading, the job options that plan runs (one
declaration, one builder), and help texts that list what is registered when the CLI is built."""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand

F = TypeVar("F", bound=Callable)

PLUGIN_HELP = ("A plugin registering methods, datasets, metrics, layouts, launchers, archs, protocols or selection "
               "rules: path to a .py file or an importable module (repeatable; also $FAIRBENCH_PLUGINS).")
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


def load_plugins_or_fail(plugins: list[str] | None, methods: bool = True) -> None:
    """Load the built-ins, entry points, $FAIRBENCH_PLUGINS and `plugins` (the built-in methods, which import
    torch, only if `methods`), or fail with the one line naming the plugin that broke."""
    from fairbench.registry import InvalidNameError, PluginError, load_plugins

    try:
        load_plugins(plugins or [], methods=methods)
    except (PluginError, InvalidNameError) as exc:
        fail(str(exc))


def load_dataset(name: str | None, plugins: list[str] | None = None, methods: bool = False):
    """Load plugins (with the built-in methods only if `methods`), then the registered dataset `name` (None: the
    default one), or fail with one line."""
    from fairbench.registry import UnknownDatasetError, get_dataset

    load_plugins_or_fail(plugins, methods)
    try:
        return get_dataset(name)
    except UnknownDatasetError as exc:
        fail(str(exc))


def check_select(select: str | None) -> None:
    """A `--select` that names a registered selection rule (or none), else one line listing them."""
    from fairbench.registry import UnknownNameError
    from fairbench.selection import get_select_rule

    if select is None:
        return
    try:
        get_select_rule(select)
    except UnknownNameError as exc:
        fail(f"--select: {exc}")


def load_results_reporting(out, dataset: str | None = None, study=None):
    """Load a results folder for a reporting command, keeping only `dataset`'s runs (a registry name or a results
    tag) when given; skipped files and run warnings go to stderr.

    `study` (from `load_study_or_fail`) keeps only that study's runs and names the ones still missing.
    """
    from fairbench.registry import is_dataset_file
    from fairbench.report.load import load_results, select_dataset

    if is_dataset_file(dataset):  # a dataset file: its runs carry the name it declares
        dataset = load_dataset(dataset).name
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


def load_study_or_fail(name: str, plugins: list[str] | None = None):
    """(study, its jobs) for `--study NAME` of a reporting command; a one-line error if it cannot be read."""
    from fairbench.runs.request import RequestError
    from fairbench.study import StudyError, load_study

    load_plugins_or_fail(plugins)
    try:
        study = load_study(name)
        return study, study.request().jobs()
    except (StudyError, RequestError) as exc:
        fail(f"{exc}; a plugin's method needs --plugin or $FAIRBENCH_PLUGINS here" if "unknown method" in str(exc)
             else str(exc))


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


# ------------------------------------------------------------------ help that lists what is registered

_MARK = "\ue00a"  # a private-use character: never in a real help text, and not whitespace (typer strips help)
_LISTING = re.compile(f"{_MARK}([a-z-]+){_MARK}")


def registered(plural: str) -> str:
    """A placeholder for an option's help: replaced by `name: description; ...` of every registered entry of that
    kind ("layouts", "launchers", "metrics", "select-rules", ...) when the help is shown (`ListingCommand`)."""
    return f"{_MARK}{plural}{_MARK}"


def listing(plural: str) -> str:
    """`name: description; ...` of a kind's registered entries (the text `registered` stands for); the
    pseudo-kinds "compare-metrics" and "table-metrics" name the metrics `compare` tests and tables show."""
    if plural in ("compare-metrics", "table-metrics"):
        from fairbench.metrics import compare_metrics, table_metrics

        chosen = compare_metrics() if plural == "compare-metrics" else table_metrics()
        return ", ".join(f"{m.name} ({m.label})" for m in chosen)
    from fairbench.registry import registry_of

    return "; ".join(f"{name}: {description}" for name, description in registry_of(plural).describe())


def fill_listings(text: str) -> str:
    """`text` with every `registered(...)` placeholder replaced by its listing."""
    return _LISTING.sub(lambda m: listing(m.group(1)), text)


class ListingCommand(TyperCommand):
    """A command whose options' help may name what is registered (`registered`): filled in when its help is shown,
    so a plugin loaded before is listed, and no other invocation pays for importing the registered kinds."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.get_params(ctx):
            if isinstance(getattr(param, "help", None), str) and _MARK in param.help:
                param.help = fill_listings(param.help)
        super().format_help(ctx, formatter)


class LiveCommand:
    """A command function whose options are read when the CLI is built (typer builds it on every call): `extra` adds
    options a registry declares (`run` takes each registered launcher's own). A plugin loaded before that, from
    --plugin, $FAIRBENCH_PLUGINS or an entry point (`preload_plugins`), adds its options."""

    def __init__(self, func: Callable[..., Any],
                 extra: Callable[[], list[tuple[str, type, Any]]] | None = None) -> None:
        self.func, self.extra = func, extra
        self.__name__, self.__qualname__ = func.__name__, func.__qualname__
        self.__module__, self.__doc__ = func.__module__, func.__doc__
        self.__wrapped__ = func

    def _extra(self) -> list[tuple[str, type, Any]]:
        return self.extra() if self.extra is not None else []

    @property
    def __signature__(self) -> inspect.Signature:
        base = inspect.signature(self.func, eval_str=True)
        params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
                   for name, annotation, option in self._extra()]
        return base.replace(parameters=params)

    @property
    def __annotations__(self) -> dict[str, Any]:  # typing.get_type_hints reads these
        hints = typing.get_type_hints(self.func)
        hints.update({name: annotation for name, annotation, _ in self._extra()})
        return hints

    def __call__(self, **kwargs: Any) -> Any:
        return self.func(**kwargs)


def preload_plugins(argv: list[str]) -> None:
    """Before the CLI is built: load the plugins named by --plugin/-p in `argv`, $FAIRBENCH_PLUGINS and the entry
    points (not the built-in methods: --help must not pay for torch), so their metrics, layouts and launchers (with
    their options) are part of every command and its --help."""
    specs = []
    for i, arg in enumerate(argv):
        if arg in ("--plugin", "-p") and i + 1 < len(argv):
            specs.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            specs.append(arg.partition("=")[2])
    load_plugins_or_fail(specs, methods=False)


# ------------------------------------------------------------------ the job options: declared once, built once

METHOD_OPTION = typer.Option(None, "--method", "-m", help="Method name(s): comma list and wildcards, e.g. "
                             "'clip,fairclip' or 'fairmoe*'. See `fairbench methods`.")
ARCH_OPTION = typer.Option(None, "--arch", help="tiny (default; CPU demo), b16, l14, another registered arch "
                           "(`fairbench list archs`) or an open_clip model name; comma list allowed.")
ATTR_OPTION = typer.Option(None, "--attr", "-a", help="Training attribute(s) for methods that use one, comma list "
                           "(`fairbench data list` shows each dataset's). Default: all of the dataset's.")
SEEDS_OPTION = typer.Option(None, "--seeds", "-s", min=1, help="Seeds 0..S-1 (default 3, at most 1000).")
PROTOCOL_OPTION = typer.Option(None, "--protocol", help="Training protocol: 'fairbench' (default: FairCLIP's "
                               "fine-tuning with validation selection and fp32 numerics) or 'fairclip' (the released "
                               "FairCLIP/Fair-MoE recipe exactly); see the README's protocol table.")
SELECT_OPTION = typer.Option(None, "--select", help="Model selection (default: the protocol's rule): "
                             + registered("select-rules") + ".")
SET_OPTION = typer.Option(None, "--set", help="Method or trainer setting, key=value (repeatable); prefix 'method.' "
                          "or 'train.' to disambiguate. Trainer settings are checked against their allowed range.")
STUDY_OPTION = typer.Option(None, "--study", help="A whole study: a shipped name (e.g. fair-moe-paper) or a .toml "
                            "file naming methods, archs, attributes, seeds, protocol, select, dataset and settings; "
                            "replaces --method/--arch/--attr/--seeds/--protocol/--select/--dataset.")
DATA_OPTION = typer.Option(None, "--data", help="Dataset folder. Default: the dataset's environment variable "
                           "(see `fairbench data list`), else its built-in SYNTHETIC stand-in (generated once).")
EPOCHS_OPTION = typer.Option(None, "--epochs", min=1, help="Override the arch's default epoch count.")
PRETRAINED_OPTION = typer.Option("default", "--pretrained", help="'default' (the arch's usual weights: openai for "
                                 "b16/l14; for tiny a CLIP pretraining on the dataset's pretraining set, built once), "
                                 "an open_clip tag, a local checkpoint, or 'none'.")
TEXT_SOURCE_OPTION = typer.Option(None, "--text-source", help="Training text, one of the dataset's text sources "
                                  "(default: its first; `fairbench data list` shows them).")
PLUGIN_OPTION = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP)
DATASET_OPTION = typer.Option(None, "--dataset", "-d", help=DATASET_HELP)


def parse_set(items: list[str] | None) -> dict[str, str]:
    """`--set key=value` items as a dict, or one line naming the malformed one."""
    overrides: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r} is not key=value (e.g. --set fair_lambda=1e-5)")
        overrides[key.strip()] = value.strip()
    return overrides


def job_request(*, method: str | None, arch: str | None, attr: str | None, seeds: int | None, protocol: str | None,
                select: str | None, dataset: str | None, set_: list[str] | None, study: str | None,
                required: bool = True):
    """The JobRequest (fairbench.runs.request) of `run`/`status` job options, from a study or from the options; one
    line on any problem. Plugins must be loaded first. None when `required` is False and neither --method nor
    --study is given (status then lists folders only)."""
    from fairbench.runs.request import RequestError, request_from_options
    from fairbench.study import StudyError, load_study

    overrides = parse_set(set_)
    if study is not None:
        fixed = {"method": method, "arch": arch, "attr": attr, "seeds": seeds, "protocol": protocol,
                 "select": select, "dataset": dataset}
        given = [f"--{key}" for key, value in fixed.items() if value is not None]
        if given:
            fail(f"--study {study} fixes methods, archs, attributes, seeds, protocol, select and dataset; drop "
                 f"{', '.join(given)} (or copy the study file and edit it)")
        try:
            return load_study(study).request(overrides)
        except StudyError as exc:
            fail(str(exc))
    if method is None:
        if not required:
            return None
        fail("give --method (e.g. --method clip,fairclip) or --study (e.g. --study fair-moe-paper)")
    check_select(select)
    try:
        return request_from_options(methods=split_list(method) or [], archs=split_list(arch),
                                    attributes=split_list(attr), seeds=seeds, protocol=protocol, select=select,
                                    dataset=dataset, overrides=overrides)
    except RequestError as exc:
        fail(str(exc))


def plan_request(request, out: Path, **run_options: Any) -> list:
    """The request's planned jobs, or one line (before anything runs)."""
    from fairbench.runs.request import RequestError

    try:
        return request.plan(out, **run_options)
    except RequestError as exc:
        fail(str(exc))
