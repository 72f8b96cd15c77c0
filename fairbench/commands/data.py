"""`fairbench data synth|check`: make a synthetic FairVLMed, or validate a dataset folder before a run."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(name="data", help="Create (synthetic) and validate FairVLMed-format datasets.",
                  no_args_is_help=True, add_completion=False)

# Same values as fairbench.data.synth.DEFAULTS (not imported: that module loads numpy); a test checks.
_DEFAULTS = {"n_train": 1500, "n_val": 400, "n_test": 1000, "size": 128, "seed": 0}


@app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="New (or empty) folder to write the dataset to."),
    n_train: int = typer.Option(_DEFAULTS["n_train"], "--n-train", min=1, help="Training samples."),
    n_val: int = typer.Option(_DEFAULTS["n_val"], "--n-val", min=1, help="Validation samples."),
    n_test: int = typer.Option(_DEFAULTS["n_test"], "--n-test", min=1, help="Test samples."),
    size: int = typer.Option(_DEFAULTS["size"], "--size", min=16,
                             help="Image width in px; height keeps FairVLMed's 664:512 aspect."),
    seed: int = typer.Option(_DEFAULTS["seed"], "--seed", help="Same seed, same bytes."),
) -> None:
    """Write a synthetic FairVLMed (real on-disk format, learnable, with a planted race bias)."""
    from fairbench.data.format import DatasetError
    from fairbench.data.synth import make_synthetic

    try:
        path = make_synthetic(out, n_train=n_train, n_val=n_val, n_test=n_test, size=size, seed=seed)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote synthetic FairVLMed to {path} (train {n_train}, val {n_val}, test {n_test}, "
               f"width {size} px, seed {seed})")


@app.command("check")
def check(path: Path = typer.Argument(..., help="Dataset folder holding Training/ Validation/ Test/.")) -> None:
    """Validate a dataset folder; print counts per split × group × label and every problem (exit 1 if any)."""
    from rich.console import Console
    from rich.table import Table

    from fairbench.data.check import check_dataset
    from fairbench.data.format import ATTRIBUTE_GROUPS, SPLITS, UNKNOWN
    from fairbench.data.synth import is_synthetic

    report = check_dataset(path)
    console = Console(width=160)
    kind = "synthetic" if is_synthetic(path) else "FairVLMed"
    splits = [s for s in SPLITS if s in report.splits]
    for s in splits:
        rep = report.splits[s]
        pos = sum(v for (a, _, y), v in rep.counts.items() if a == "race" and y == 1)
        shapes = ", ".join("×".join(map(str, shape)) for shape in sorted(rep.image_shapes))
        console.print(f"{rep.folder}/: {rep.n_files} files, {rep.n_valid} valid, glaucoma {pos}"
                      + (f", {rep.n_unknown} with an unknown attribute" if rep.n_unknown else "")
                      + (" (dropped from evaluation)" if s != "train" and rep.n_unknown else "")
                      + (f"; images {shapes}" if shapes else ""))
    if splits:
        table = Table(title=f"{kind} dataset {path}: samples per group (no glaucoma / glaucoma)")
        table.add_column("attribute")
        table.add_column("group")
        for s in splits:
            table.add_column(f"{report.splits[s].folder} no", justify="right")
            table.add_column(f"{report.splits[s].folder} yes", justify="right")
        for attr, groups in ATTRIBUTE_GROUPS.items():
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
