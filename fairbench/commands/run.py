"""`fairbench run`: expand methods × archs × attributes × seeds into jobs and run each under the one trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import DATASET_HELP, PLUGIN_HELP, fail, load_dataset, split_list

SLURM_PANEL = "SLURM (--launcher slurm)"


def run(
    method: str = typer.Option(..., "--method", "-m", help="Method name(s): comma list and wildcards, e.g. "
                               "'clip,fairclip' or 'fairmoe*'. See `fairbench methods`."),
    arch: str = typer.Option("tiny", "--arch", help="tiny (CPU demo, random init), b16, l14, or an open_clip "
                             "model name; comma list allowed."),
    attr: str = typer.Option(None, "--attr", "-a", help="Training attribute(s) for methods that use one, comma list "
                             "(`fairbench data list` shows each dataset's). Default: all of the dataset's."),
    seeds: int = typer.Option(3, "--seeds", "-s", min=1, help="Run seeds 0..S-1."),
    data: str = typer.Option(None, "--data", help="Dataset folder. Default: the dataset's environment variable "
                             "(see `fairbench data list`), else its built-in SYNTHETIC stand-in (generated once)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results root."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the arch's default epoch count."),
    set_: list[str] = typer.Option(None, "--set", help="Method or trainer setting, key=value (repeatable); "
                                   "prefix 'method.' or 'train.' to disambiguate."),
    protocol: str = typer.Option("fairbench", "--protocol", help="Training protocol: 'fairbench' (default: "
                                 "FairCLIP's fine-tuning with validation selection and fp32 numerics) or 'fairclip' "
                                 "(the released FairCLIP/Fair-MoE recipe exactly); see the README's protocol table."),
    select: str = typer.Option(None, "--select", help="Model selection: 'val' (default, best validation AUC) or "
                               "'test' (the papers' best-test-epoch rule; optimistic, labelled in every output)."),
    pretrained: str = typer.Option("default", "--pretrained", help="'default' (the arch's usual weights: openai "
                                   "for b16/l14, none for tiny), an open_clip tag, a local checkpoint, or 'none'."),
    text_source: str = typer.Option(None, "--text-source", help="Training text, one of the dataset's text sources "
                                    "(default: its first; `fairbench data list` shows them)."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    launcher: str = typer.Option("local", "--launcher", help="Where jobs run: local (this process, one after "
                                 "another) or slurm (one SLURM job array through submitit; options below)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List each job with its run folder and state "
                                 "(done / pending); train nothing."),
    slurm_partition: str = typer.Option(None, "--slurm-partition", rich_help_panel=SLURM_PANEL,
                                        help="Partition to submit to (default: the cluster's)."),
    slurm_time: str = typer.Option(None, "--slurm-time", rich_help_panel=SLURM_PANEL, help="Time limit of each "
                                   "task: minutes or HH:MM:SS (default 60 min); a task that reaches it requeues "
                                   "itself and resumes."),
    slurm_gpus_per_task: int = typer.Option(None, "--slurm-gpus-per-task", rich_help_panel=SLURM_PANEL,
                                            help="GPUs for each task (one run)."),
    slurm_cpus_per_task: int = typer.Option(None, "--slurm-cpus-per-task", rich_help_panel=SLURM_PANEL,
                                            help="CPUs for each task."),
    slurm_mem: str = typer.Option(None, "--slurm-mem", rich_help_panel=SLURM_PANEL,
                                  help="Memory for each task, e.g. 32G."),
    slurm_account: str = typer.Option(None, "--slurm-account", rich_help_panel=SLURM_PANEL,
                                      help="Account to charge."),
    slurm_qos: str = typer.Option(None, "--slurm-qos", rich_help_panel=SLURM_PANEL, help="Quality of service."),
    slurm_array_parallelism: int = typer.Option(None, "--slurm-array-parallelism", rich_help_panel=SLURM_PANEL,
                                                help="At most this many tasks of the array at once."),
    no_wait: bool = typer.Option(False, "--no-wait", rich_help_panel=SLURM_PANEL, help="Return once the array "
                                 "is submitted (watch with `fairbench status`); rerun the command to repair runs."),
) -> None:
    """Train and evaluate methods; one result folder per (dataset, method, arch, attribute, config, seed)."""
    import time

    from rich.console import Console

    from fairbench.commands.run_display import console_logging
    from fairbench.datasets import DatasetError
    from fairbench.method import SettingsError
    from fairbench.registry import UnknownNameError, expand_methods

    started = time.perf_counter()
    console = Console()
    if not console.is_terminal:
        console.soft_wrap = True  # a log file gets whole lines, never an 80-column wrap
    console_logging(console)
    spec = load_dataset(dataset, plugin, methods=True)
    try:
        methods = expand_methods(method)
    except UnknownNameError as exc:
        fail(str(exc))
    attrs = split_list(attr)
    try:
        spec.check_attributes(attrs)
    except DatasetError as exc:
        fail(f"--attr: {exc}")
    if select not in (None, "val", "test"):
        fail(f"--select must be 'val' or 'test', got {select!r}")
    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r} is not key=value (e.g. --set fair_lambda=1e-5)")
        overrides[key.strip()] = value.strip()
    archs = split_list(arch) or ["tiny"]
    _check_archs(archs)

    from fairbench.jobs import RunOptions, expand_jobs, plan
    from fairbench.launchers import get_launcher

    slurm = {"partition": slurm_partition, "time": slurm_time, "gpus_per_task": slurm_gpus_per_task,
             "cpus_per_task": slurm_cpus_per_task, "mem": slurm_mem, "account": slurm_account, "qos": slurm_qos,
             "array_parallelism": slurm_array_parallelism, "wait": not no_wait}
    try:
        chosen = get_launcher(launcher, **_slurm_options(launcher, slurm))
    except ValueError as exc:
        fail(str(exc))
    options = RunOptions(out=out, dataset=spec.name, data=data,
                         pretrained=None if pretrained.lower() == "none" else pretrained,
                         text_source=text_source, epochs=epochs, select=select, overrides=overrides,
                         plugins=tuple(plugin or ()), protocol=protocol)
    try:  # validates every --set and the data before any training starts
        planned = plan(options, expand_jobs(methods, archs, attrs, list(range(seeds)), dataset=spec.name))
    except (SettingsError, DatasetError) as exc:
        fail(str(exc))
    if dry_run:
        _print_plan(console, planned)
        return
    _check_weights(console, planned)
    _run_all(console, chosen, planned, started)


def _slurm_options(launcher: str, given: dict) -> dict:
    """The --slurm-* options for the SLURM launcher; given to any other launcher they are an error."""
    if launcher == "slurm":
        return given
    used = [f"--slurm-{k.replace('_', '-')}" for k, v in given.items() if k != "wait" and v is not None]
    used += [] if given["wait"] else ["--no-wait"]
    if used:
        fail(f"{', '.join(used)} need --launcher slurm")
    return {}


def _check_archs(archs: list[str]) -> None:
    from fairbench.models.backbones import input_spec

    for a in archs:
        try:
            input_spec(a)
        except ValueError as exc:
            fail(str(exc))


def _check_weights(console, planned) -> None:
    """Every pending job's weights must be at hand before any run folder is made; warn about slow CPU runs."""
    from fairbench.models.backbones import WeightsUnavailableError, cpu_estimate, ensure_weights

    pending = [p for p in planned if p.state() != "done"]
    for arch, pretrained in dict.fromkeys((p.job.arch, p.config["pretrained"]) for p in pending):
        try:
            ensure_weights(arch, pretrained)
        except WeightsUnavailableError as exc:
            fail(str(exc))
    import torch

    if torch.cuda.is_available():
        return
    for arch in dict.fromkeys(p.job.arch for p in pending):
        jobs = [p for p in pending if p.job.arch == arch]
        estimate = cpu_estimate(arch, jobs)
        if estimate:
            console.print(f"[yellow]warning[/]: {estimate}")


def _print_plan(console, planned) -> None:
    from collections import Counter

    from fairbench.method import flat_settings

    states = [p.state() for p in planned]
    counts = Counter(states)
    console.print(f"{len(planned)} job(s) (dry run): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for p, state in zip(planned, states, strict=True):
        settings = p.train_settings()
        ms = ", ".join(f"{k}={v}" for k, v in flat_settings(p.method_instance().settings).items()) or "-"
        console.print(f"{state:8} {p.label()}  {p.run_dir}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"         method: {ms}; trainer: epochs={settings.epochs} batch={settings.batch_size} "
                      f"{settings.optimizer} lr={settings.lr:g} select={settings.select}",
                      markup=False, highlight=False, soft_wrap=True)


def _run_all(console, launcher, planned, started: float) -> None:
    from fairbench.commands.run_display import ConsoleReporter, elapsed
    from fairbench.datasets import DatasetError
    from fairbench.models import WeightsUnavailableError

    out = planned[0].out if planned else None
    with ConsoleReporter(console) as reporter:
        try:
            results = launcher.launch(planned, reporter)
        except (DatasetError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
            reporter.close()
            fail(f"{reporter.current or 'run'}: {exc}")
    if any(r.record and r.record["dataset"]["synthetic"] for r in results):
        console.print("[bold yellow]These results are on SYNTHETIC data, not the real dataset.[/]")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "submitted")}
    if counts["submitted"]:
        console.print(f"Submitted {counts['submitted']} job(s) in {elapsed(started)}; {counts['skipped']} skipped "
                      f"(already done). Results will appear under {out}/.")
        return
    console.print(f"Finished in {elapsed(started)}: {counts['done']} trained, {counts['skipped']} skipped "
                  f"(already done), {counts['failed']} failed. Results under {out}/ — show them with "
                  f"`fairbench table --out {out}`.")
    if counts["failed"]:
        raise typer.Exit(1)
