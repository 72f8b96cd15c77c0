"""`fairbench data list|synth|check`: the registered datasets, a synthetic stand-in, or a folder's validation."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import DATASET_HELP, PLUGIN_HELP, load_dataset

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
    from rich.console import Console
    from rich.table import Table

    from fairbench.datasets import UNKNOWN

    ds = load_dataset(dataset, plugin)
    try:
        report = ds().check(path)
    except NotImplementedError as exc:
        typer.echo(f"error: {exc}; `fairbench run --dataset {ds.name} --dry-run` still lists its jobs", err=True)
        raise typer.Exit(2) from None
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
        raise typer.Exit(1)
    console.print("[green]no problems found[/]")
