"""`fairbench data list|synth|check|info|download`: the registered datasets, a synthetic stand-in, a folder's
validation, a dataset's card, and a download from its Hugging Face repository."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import DATASET_HELP, PLUGIN_HELP, fail, load_dataset

app = typer.Typer(name="data", help="List datasets, create synthetic stand-ins and validate dataset folders.",
                  no_args_is_help=True, add_completion=False)


@app.command("list")
def list_(plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP)) -> None:
    """Registered datasets (built-in and plugins): label, protected attributes with their groups, prompts."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from fairbench.registry import get_dataset, list_datasets

    default = load_dataset(None, plugin).name
    names = list_datasets()
    table = Table(title=f"fairbench datasets ({len(names)})", show_lines=True)
    for col in ("dataset", "results tags", "label (0 / 1)", "attributes: groups", "zero-shot prompts",
                "text sources", "description"):
        table.add_column(col)
    for name in names:
        cls = get_dataset(name)
        tags = ", ".join(t for t in (cls.tag, cls.synthetic_tag and f"{cls.synthetic_tag} (synthetic)") if t)
        attrs = "\n".join(f"{a}: {', '.join(g.values())}" for a, g in cls.attributes.items())
        table.add_row(name + (" (default)" if name == default else ""), tags,
                      f"{cls.label}: {cls.classes[0]} / {cls.classes[1]}", attrs,
                      "\n".join(cls.prompts), ", ".join(cls.text_sources), cls.description)
    Console(width=None if sys.stdout.isatty() else 200).print(table)  # a pipe gets a wide layout, not 80 columns


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="New (or empty) folder to write the dataset to."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    n_train: int = typer.Option(None, "--n-train", min=1, help="Training samples (default: the generator's)."),
    n_val: int = typer.Option(None, "--n-val", min=1, help="Validation samples."),
    n_test: int = typer.Option(None, "--n-test", min=1, help="Test samples."),
    size: int = typer.Option(None, "--size", min=16, help="Image size in px (the generator sets the shape)."),
    seed: int = typer.Option(None, "--seed", help="Same seed, same bytes."),
) -> None:
    """Write a synthetic dataset in the dataset's real on-disk format (options left out keep its defaults)."""
    from fairbench.datasets import DatasetError

    ds = load_dataset(dataset, plugin)
    given = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed}
    options = {k: v for k, v in given.items() if v is not None}
    try:
        path = ds().synthesize(out, **options)
    except NotImplementedError as exc:
        typer.echo(f"error: {exc}; pass a dataset that has one (see `fairbench data list`)", err=True)
        raise typer.Exit(2) from None
    except (DatasetError, TypeError) as exc:  # TypeError: an option this generator does not take
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in options.items()) or "default settings"
    typer.echo(f"wrote synthetic {ds.name} data to {path} ({shown})")


@app.command("check")
def check(
    path: Path = typer.Argument(..., help="Dataset folder to validate."),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
) -> None:
    """Validate a dataset folder; print counts per split × group × label and every problem (exit 1 if any)."""
    ds = load_dataset(dataset, plugin)
    try:
        report = ds().check(path)
    except NotImplementedError as exc:
        typer.echo(f"error: {exc}; `fairbench run --dataset {ds.name} --dry-run` still lists its jobs", err=True)
        raise typer.Exit(2) from None
    if not print_check(ds, path, report):
        raise typer.Exit(1)


def print_check(ds, path: Path, report) -> bool:
    """Print the split lines, the split × group × label counts and every problem; True when there are none."""
    from rich.console import Console
    from rich.table import Table

    from fairbench.datasets import UNKNOWN

    console = Console(width=160)
    kind = f"synthetic {ds.name}" if report.synthetic else ds.name
    no, yes = ds.classes
    splits = list(report.splits)
    for s in splits:
        rep = report.splits[s]
        shapes = ", ".join("×".join(map(str, shape)) for shape in sorted(rep.image_shapes))
        console.print(f"{rep.folder}/: {rep.n_files} files, {rep.n_valid} valid, {ds.label} {rep.n_positive}"
                      + (f", {rep.n_unknown} with an unknown attribute" if rep.n_unknown else "")
                      + (" (dropped from evaluation)" if s != "train" and rep.n_unknown else "")
                      + (f"; images {shapes}" if shapes else ""))
    if splits:
        table = Table(title=f"{kind} dataset {path}: samples per group (no = {no} / yes = {yes})")
        table.add_column("attribute")
        table.add_column("group")
        for s in splits:
            table.add_column(f"{report.splits[s].folder} no", justify="right")
            table.add_column(f"{report.splits[s].folder} yes", justify="right")
        for attr, groups in ds.attributes.items():
            for code, name in [*groups.items(), (UNKNOWN, "unknown (−1)")]:
                cells = [str(report.splits[s].counts[(attr, code, y)]) for s in splits for y in (0, 1)]
                if code == UNKNOWN and all(c == "0" for c in cells):
                    continue
                table.add_row(attr, name, *cells)
            table.add_section()
        console.print(table)
    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s):[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", markup=False, highlight=False, soft_wrap=True)
        return False
    console.print("[green]no problems found[/]")
    return True


@app.command("info")
def info(
    name: str = typer.Argument(None, help="Dataset name or dataset file (.toml); default: every registered dataset."),
    data: Path = typer.Option(None, "--data", help="Data folder to count (default: the dataset's environment "
                              "variable; no counts without one)."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
) -> None:
    """A dataset's card: source, licence, citation, label, attributes and groups, counts (when the data is there),
    how to get it, and known pitfalls."""
    from fairbench.commands.common import load_plugins_or_fail
    from fairbench.registry import get_dataset, list_datasets

    if name:
        classes = [load_dataset(name, plugin)]
    else:
        load_plugins_or_fail(plugin, methods=False)
        classes = [get_dataset(n) for n in list_datasets()]
    for i, cls in enumerate(classes):
        if i:
            typer.echo("")
        typer.echo(card_text(cls))
        root = data if data is not None and name else _env_data(cls)
        if root is None:
            typer.echo(f"counts: no data given (--data FOLDER{f' or ${cls.env_var}' if cls.env_var else ''})")
            continue
        try:
            report = cls().check(root)
        except NotImplementedError:
            typer.echo("counts: this dataset has no checker")
            continue
        typer.echo(f"counts ({root}): " + "; ".join(
            f"{s} {r.n_valid} ({cls.label} {r.n_positive})" for s, r in report.splits.items())
            + (f"; {len(report.problems)} problem(s): `fairbench data check {root} --dataset {cls.name}`"
               if report.problems else ""))


def _env_data(cls) -> Path | None:
    import os

    value = os.environ.get(cls.env_var) if cls.env_var else None
    return Path(value) if value else None


def card_text(cls) -> str:
    """The card of a dataset class as plain text lines."""
    lines = [f"{cls.name}: {cls.description}",
             f"label: {cls.label} (0 = {cls.classes[0]}, 1 = {cls.classes[1]})",
             *(f"attribute {a}: {', '.join(g.values())}" for a, g in cls.attributes.items()),
             f"zero-shot prompts: {cls.prompts[0]!r} / {cls.prompts[1]!r}",
             f"text sources: {', '.join(cls.text_sources)}"]
    lines += [f"{key}: {value}" for key, value in cls.card.lines()]
    if cls.dataset_file:
        lines.append(f"dataset file: {cls.dataset_file}")
    return "\n".join(lines)


@app.command("download")
def download(
    name: str = typer.Argument(..., help="Dataset name (see `fairbench data list`)."),
    to: Path = typer.Option(..., "--to", help="Folder to lay the dataset out in (new or empty, or an earlier "
                            "download to update)."),
    repo: str = typer.Option(None, "--repo", help="Hugging Face dataset repository id (default: the dataset card's)."),
    revision: str = typer.Option(None, "--revision", help="Branch, tag or commit (default: the card's, else main)."),
    include: list[str] = typer.Option(None, "--include", help="Only repository files matching this glob "
                                      "(repeatable; default: the card's patterns, else all)."),
    root_file: str = typer.Option(None, "--root-file", help="A file marking the dataset's folder inside the "
                                  "repository (default: the card's)."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
) -> None:
    """Fetch a dataset from its Hugging Face dataset repository (resumable, with progress; honours HF_TOKEN, HF_HOME
    and HF_HUB_OFFLINE), lay it out as fairbench reads it, then run `data check` on it."""
    from dataclasses import replace

    from fairbench.datasets.card import HubSource
    from fairbench.datasets.download import DownloadError
    from fairbench.datasets.download import download as fetch

    ds = load_dataset(name, plugin)
    source = ds.card.download
    if source is None and repo is None:
        point = "--data FOLDER" + (f" or set ${ds.env_var}" if ds.env_var else "")
        how = ds.card.access or f"its card names no source; get the data from its publisher, then pass {point}"
        fail(f"{ds.name} has no download source; get it this way: {how} (pass --repo ID if a Hugging Face dataset "
             "repository holds it)")
    source = source or HubSource(repo_id=repo)
    source = replace(source, repo_id=repo or source.repo_id, revision=revision or source.revision,
                     include=tuple(include) if include else source.include,
                     root_file=source.root_file if root_file is None else root_file)
    try:
        got = fetch(source, to)
    except DownloadError as exc:
        fail(str(exc))
    except OSError as exc:
        from fairbench.files import describe_os_error

        fail(describe_os_error(exc, "--to"))
    if got.unchanged:
        typer.echo(f"{got.path}: already holds {source.repo_id} at commit {got.commit[:12]}; nothing to do")
    else:
        typer.echo(f"downloaded {source.repo_id} (commit {got.commit[:12]}, {got.n_files} files) to {got.path}")
    report = ds().check(got.path)
    if not print_check(ds, got.path, report):
        raise typer.Exit(1)
    typer.echo(f"run on it with: fairbench run --dataset {name} --data {got.path} --method ...")
