"""`fairbench export`: a LoRA run's merged weights (backbone + adapters) as one safetensors file."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import PLUGIN_OPTION, fail, load_plugins_or_fail


def export(
    run: Path = typer.Argument(..., help="A finished run folder trained with --set adapter=lora."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged weights' file (.safetensors)."),
    plugin: list[str] = PLUGIN_OPTION,
) -> None:
    """Merge a LoRA run's adapters into its backbone and write the weights, for `--pretrained FILE`."""
    load_plugins_or_fail(plugin)
    from fairbench.models.adapters import AdapterError, export_merged
    from fairbench.models.backbones import WeightsUnavailableError
    from fairbench.runs.results import CorruptResultError

    if out.suffix != ".safetensors":
        fail(f"--out {out}: the merged weights are written as safetensors; name the file *.safetensors")
    try:
        path = export_merged(run, out)
    except (AdapterError, CorruptResultError, WeightsUnavailableError, OSError) as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    typer.echo(f"merged weights of {run} written to {path}; score them with `fairbench run --method zeroshot "
               f"--arch ARCH --pretrained {path}`")
