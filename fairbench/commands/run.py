"""`fairbench run`: expand methods × archs × attributes × seeds into jobs and run each under the one trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from fairbench.commands.common import DATASET_HELP, PLUGIN_HELP, exits_on_signal, fail, load_dataset, split_list

SLURM_PANEL = "SLURM (--launcher slurm)"


@exits_on_signal
def run(
    method: str = typer.Option(None, "--method", "-m", help="Method name(s): comma list and wildcards, e.g. "
                               "'clip,fairclip' or 'fairmoe*'. See `fairbench methods`. Required unless --study."),
    arch: str = typer.Option(None, "--arch", help="tiny (default; CPU demo, random init), b16, l14, or an open_clip "
                             "model name; comma list allowed."),
    attr: str = typer.Option(None, "--attr", "-a", help="Training attribute(s) for methods that use one, comma list "
                             "(`fairbench data list` shows each dataset's). Default: all of the dataset's."),
    seeds: int = typer.Option(None, "--seeds", "-s", min=1, help="Run seeds 0..S-1 (default 3)."),
    data: str = typer.Option(None, "--data", help="Dataset folder. Default: the dataset's environment variable "
                             "(see `fairbench data list`), else its built-in SYNTHETIC stand-in (generated once)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results root."),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Override the arch's default epoch count."),
    set_: list[str] = typer.Option(None, "--set", help="Method or trainer setting, key=value (repeatable); "
                                   "prefix 'method.' or 'train.' to disambiguate."),
    protocol: str = typer.Option(None, "--protocol", help="Training protocol: 'fairbench' (default: "
                                 "FairCLIP's fine-tuning with validation selection and fp32 numerics) or 'fairclip' "
                                 "(the released FairCLIP/Fair-MoE recipe exactly); see the README's protocol table."),
    select: str = typer.Option(None, "--select", help="Model selection: 'val' (default, best validation AUC) or "
                               "'test' (the papers' best-test-epoch rule; optimistic, labelled in every output)."),
    pretrained: str = typer.Option("default", "--pretrained", help="'default' (the arch's usual weights: openai "
                                   "for b16/l14; for tiny a CLIP pretraining on the dataset's pretraining set, built "
                                   "once), an open_clip tag, a local checkpoint, or 'none'."),
    text_source: str = typer.Option(None, "--text-source", help="Training text, one of the dataset's text sources "
                                    "(default: its first; `fairbench data list` shows them)."),
    plugin: list[str] = typer.Option(None, "--plugin", "-p", help=PLUGIN_HELP),
    dataset: str = typer.Option(None, "--dataset", "-d", help=DATASET_HELP),
    study: str = typer.Option(None, "--study", help="Run a whole study: a shipped name (e.g. fair-moe-paper) or a "
                              ".toml file naming methods, archs, attributes, seeds, protocol, select, dataset and "
                              "settings; replaces --method/--arch/--attr/--seeds/--protocol/--select/--dataset."),
    launcher: str = typer.Option("local", "--launcher", help="Where jobs run: local (this machine: in this process, "
                                 "or in worker processes with --workers/--gpus) or slurm (one SLURM job array "
                                 "through submitit; --slurm-* options)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Local launcher: run this many jobs at once, each in its "
                                "own worker process (1: one after another in this process)."),
    gpus: str = typer.Option(None, "--gpus", help="Local launcher: one worker process per listed GPU, e.g. 0,1,2,3; "
                             "each sees only its GPU (CUDA_VISIBLE_DEVICES)."),
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", help="With --gpus: worker processes per GPU (small "
                                     "models can share one)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List each job with its run folder and state "
                                 "(done / pending), and estimate the time left from finished runs; train nothing."),
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
    from fairbench.protocols import DEFAULT_PROTOCOL
    from fairbench.registry import UnknownNameError, expand_methods

    started = time.perf_counter()
    console = Console()
    if not console.is_terminal:
        console.soft_wrap = True  # a log file gets whole lines, never an 80-column wrap
    console_logging(console)
    chosen_study = None
    if study is not None:
        chosen_study = _load_study(study, method=method, arch=arch, attr=attr, seeds=seeds, protocol=protocol,
                                   select=select, dataset=dataset)
        method, arch, attr = ",".join(chosen_study.methods), ",".join(chosen_study.archs), None
        if chosen_study.attributes:
            attr = ",".join(chosen_study.attributes)
        protocol, select, dataset = chosen_study.protocol, chosen_study.select, chosen_study.dataset
        seed_list = list(chosen_study.seeds)
    elif method is None:
        fail("give --method (e.g. --method clip,fairclip) or --study (e.g. --study fair-moe-paper)")
    else:
        seed_list = list(range(3 if seeds is None else seeds))
    where = f"study {chosen_study.name} ({chosen_study.source})" if chosen_study else ""
    spec = load_dataset(dataset, plugin, methods=True)
    try:
        methods = expand_methods(method)
    except UnknownNameError as exc:
        fail(f"{where}: {exc}" if where else str(exc))
    attrs = split_list(attr)
    try:
        spec.check_attributes(attrs)
    except DatasetError as exc:
        fail(f"{where}: attributes: {exc}" if where else f"--attr: {exc}")
    if select not in (None, "val", "test"):
        fail(f"--select must be 'val' or 'test', got {select!r}")
    overrides = dict(chosen_study.overrides) if chosen_study else {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set {item!r} is not key=value (e.g. --set fair_lambda=1e-5)")
        overrides[key.strip()] = value.strip()
    archs = split_list(arch) or ["tiny"]
    _check_archs(archs)

    from fairbench.launchers import get_launcher
    from fairbench.runs.jobs import RunOptions, expand_jobs, plan

    local = {"workers": workers, "gpus": split_list(gpus), "runs_per_gpu": runs_per_gpu}
    slurm = {"partition": slurm_partition, "time": slurm_time, "gpus_per_task": slurm_gpus_per_task,
             "cpus_per_task": slurm_cpus_per_task, "mem": slurm_mem, "account": slurm_account, "qos": slurm_qos,
             "array_parallelism": slurm_array_parallelism, "wait": not no_wait}
    try:
        chosen = get_launcher(launcher, **_slurm_options(launcher, slurm), **(local if launcher == "local" else {}))
    except ValueError as exc:
        fail(str(exc))
    if launcher != "local" and (workers != 1 or gpus is not None or runs_per_gpu != 1):
        fail(f"--workers, --gpus and --runs-per-gpu belong to --launcher local, not {launcher}")
    options = RunOptions(out=out, dataset=spec.name, data=data,
                         pretrained=None if pretrained.lower() == "none" else pretrained,
                         text_source=text_source, epochs=epochs, select=select, overrides=overrides,
                         plugins=tuple(plugin or ()), protocol=protocol or DEFAULT_PROTOCOL)
    try:  # validates every --set and the data before any training starts
        planned = plan(options, expand_jobs(methods, archs, attrs, seed_list, dataset=spec.name))
    except (SettingsError, DatasetError) as exc:
        fail(f"{where}: {exc}" if where else str(exc))
    except OSError as exc:  # the cache (default data, pretraining set) cannot be written
        fail(_os_error_line(exc, out))
    if dry_run:
        if chosen_study:
            console.print(f"study {chosen_study.name} ({chosen_study.source}): protocol {chosen_study.protocol}, "
                          f"select {chosen_study.selection_rule}", markup=False, highlight=False, soft_wrap=True)
        _print_plan(console, planned)
        return
    _check_writable(out)
    try:
        _check_weights(console, planned)
    except OSError as exc:
        fail(_os_error_line(exc, out))
    _note_cpu_workers(console, chosen, planned)
    _run_all(console, chosen, planned, started)


def _os_error_line(exc: OSError, out: Path) -> str:
    """One line for a failed file operation before any job ran, naming the setting that picks the folder."""
    from fairbench.datasets.cache import cache_root
    from fairbench.files import describe_os_error

    where = Path(exc.filename or "").absolute()
    what = "--out" if where.is_relative_to(out.absolute()) else \
        "$FAIRBENCH_CACHE" if where.is_relative_to(cache_root().absolute()) else ""
    return describe_os_error(exc, what)


def _check_writable(out: Path) -> None:
    """The results folder takes files (a read-only, immutable or full folder fails here, before any job, with one
    line naming it); folders made for the check are removed again, so a later failure leaves no trace."""
    from fairbench.files import atomic_path

    made = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".fairbench-write-check") as tmp:
            tmp.write_bytes(b"ok")
        (out / ".fairbench-write-check").unlink()
        for folder in made:
            folder.rmdir()
    except FileExistsError:
        fail(f"--out {out}: exists and is not a folder; choose another --out")
    except OSError as exc:
        from fairbench.files import naming

        fail(_os_error_line(naming(exc, out) if exc.filename and Path(exc.filename).parent == out else exc, out))


def _load_study(name: str, **fixed):
    """The study named by --study; options it fixes may not be given too (one line says which to drop)."""
    from fairbench.study import StudyError, load_study

    given = [f"--{key}" for key, value in fixed.items() if value is not None]
    if given:
        fail(f"--study {name} fixes methods, archs, attributes, seeds, protocol, select and dataset; drop "
             f"{', '.join(given)} (or copy the study file and edit it)")
    try:
        return load_study(name)
    except StudyError as exc:
        fail(str(exc))


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
    from fairbench.training.pretrain import ensure_pretrained

    for target in {p.pretraining.key: p.pretraining for p in pending if p.pretraining is not None}.values():
        ensure_pretrained(target, pending[0].cache_dir)  # once, before any run folder; announced as a phase
    import torch

    if torch.cuda.is_available():
        return
    for arch in dict.fromkeys(p.job.arch for p in pending):
        jobs = [p for p in pending if p.job.arch == arch]
        estimate = cpu_estimate(arch, jobs)
        if estimate:
            console.print(f"[yellow]warning[/]: {estimate}")


def _note_cpu_workers(console, launcher, planned) -> None:
    """Worker processes on a CPU each use a sequential run's thread count (CPU results depend on it): say so once."""
    import os

    import torch

    slots = getattr(launcher, "slots", [])
    pending = [p for p in planned if p.state() != "done"]
    workers = min(len(slots), len(pending))
    if workers < 2 or torch.cuda.is_available() or any(s.gpu is not None for s in slots):
        return
    if all(p.train_settings().threads for p in pending):  # the config fixes the thread count already
        return
    threads = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        console.print(f"note: {workers} workers × {threads} torch threads on {cores} CPU cores: each worker uses a "
                      "sequential run's thread count, so the numbers equal a sequential run's; for speed pass "
                      "--set threads=1 (part of the config, so those are new runs)", highlight=False)


def _print_plan(console, planned) -> None:
    from collections import Counter

    from fairbench.estimate import estimate_remaining
    from fairbench.method import flat_settings
    from fairbench.runs.results import collect_results

    states = [p.state() for p in planned]
    counts = Counter(states)
    console.print(f"{len(planned)} job(s) (dry run): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    pending = [p for p, state in zip(planned, states, strict=True) if state != "done"]
    if planned:
        records = collect_results(planned[0].out).records
        for line in estimate_remaining(pending, records).lines(len(pending)):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
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
        except OSError as exc:
            reporter.close()
            fail(_os_error_line(exc, out))
    if any(r.record and r.record["dataset"]["synthetic"] for r in results):
        console.print("[bold yellow]These results are on SYNTHETIC data, not the real dataset.[/]")
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "submitted")}
    if counts["submitted"]:
        console.print(f"Submitted {counts['submitted']} job(s) in {elapsed(started)}; {counts['skipped']} skipped "
                      f"(already done). Results will appear under {out}/.")
        return
    elsewhere = sum(getattr(r, "holder", None) is not None for r in results)
    busy = f", {elsewhere} running elsewhere" if elsewhere else ""
    watch = f" (progress: `fairbench status --out {out}`)" if elsewhere else ""
    console.print(f"Finished in {elapsed(started)}: {counts['done']} trained, {counts['skipped'] - elsewhere} "
                  f"skipped (already done){busy}, {counts['failed']} failed. Results under {out}/ — show them "
                  f"with `fairbench table --out {out}`{watch}.")
    if counts["failed"]:
        failed = [r for r in results if r.status == "failed"]
        console.print(f"[red]{len(failed)} run(s) failed[/] (why: failure.json in each folder, `fairbench status "
                      f"--out {out}`); the same command retries them:", highlight=False)
        for r in failed[:10]:
            console.print(f"  {r.planned.label()}: {r.message}", markup=False, highlight=False, soft_wrap=True)
        if len(failed) > 10:
            console.print(f"  … and {len(failed) - 10} more", highlight=False)
        raise typer.Exit(1)
