"""Pure planning: from a command line's (methods × archs × attributes × seeds) to jobs with run folders.

A planned job carries everything another process needs to execute it — its resolved trainer settings (the one
`TrainSettings` every reader uses), its config and config hash, its run folder, the dataset's identity — and
planning loads no tensor: the dataset fingerprint comes from file names, sizes and checksums
(`Dataset.identify`). Method settings stay `--set` strings until the method's plugin is loaded
(`PlannedJob.method_instance`). Launchers take planned jobs; `fairbench.runs.execute` runs one.
`fairbench.runs.request` turns command-line options or a study into the jobs planned here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairbench.method import Method, SettingsError, parse_settings, settings_dict
from fairbench.registry import get_dataset, get_method
from fairbench.runs.results import RESULT_FILE, CorruptResultError, config_hash, load_result, run_config, run_dir
from fairbench.training.settings import TrainSettings, resolve_train_settings, setting_names

# The most jobs one command may plan: each is a training run, and planning holds every one in memory. The
# Fair-MoE paper's whole study (studies/fair-moe-paper.toml) is 294 jobs.
MAX_JOBS = 20_000


@dataclass(frozen=True)
class Job:
    """One training run before its settings are resolved."""

    method: str
    arch: str
    attribute: str | None
    seed: int

    def label(self) -> str:
        return f"{self.method} {self.arch} {self.attribute or '-'} seed{self.seed}"


@dataclass
class RunOptions:
    """Everything a `fairbench run` invocation fixes for all its jobs."""

    out: Path
    dataset: str | None = None  # None = the registry's default dataset
    data: str | None = None
    pretrained: str | None = "default"
    text_source: str | None = None  # None = the dataset's first text source
    protocol: str = "fairbench"
    epochs: int | None = None
    select: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    plugins: tuple[str, ...] = ()  # what a worker process must load before it can rebuild a job's method


@dataclass
class PlannedJob:
    """A job with its resolved config, hash and run folder; plain data, so it pickles to another process."""

    job: Job
    config: dict[str, Any]  # what the hash covers, besides the dataset identity
    config_hash: str
    run_dir: Path
    out: Path
    dataset: str
    data_root: Path
    data_tag: str
    data_fingerprint: str
    synthetic: bool
    n_train: int
    cache_dir: Path | None
    method_overrides: dict[str, str]  # the method's --set strings, parsed where its plugin is loaded
    settings: TrainSettings  # the trainer's settings, resolved once (fairbench.training.settings)
    plugins: tuple[str, ...] = ()
    protocol: str = "fairbench"
    pretraining: Any = None  # a fairbench.training.pretrain.PretrainTarget when the arch starts from one built here

    def label(self) -> str:
        return self.job.label()

    @property
    def result_path(self) -> Path:
        return self.run_dir / RESULT_FILE

    def state(self) -> str:
        """done (a valid result.json), invalid (a result.json that does not load), started (a run folder
        without a result), or pending."""
        if self.result_path.exists():
            try:
                load_result(self.result_path)
            except CorruptResultError:
                return "invalid"
            return "done"
        return "started" if self.run_dir.is_dir() else "pending"

    def method_instance(self) -> Method:
        cls = get_method(self.job.method)
        settings = parse_settings(cls.Settings, self.method_overrides, owner=f"method {self.job.method!r}")
        names = dict(get_dataset(self.dataset).attributes[self.job.attribute]) if self.job.attribute else {}
        method = cls(settings, self.job.attribute, len(names))
        method.group_names = names
        return method


def expand_jobs(methods: list[str], archs: list[str], attributes: list[str] | None, seeds: list[int],
                dataset: str | None = None) -> list[Job]:
    """A method that trains on an attribute runs once per attribute (default: all of the dataset's); one that
    uses none runs once per seed; a seed-independent one once per arch (and attribute). More than MAX_JOBS jobs is
    a SettingsError, counted before any is made."""
    all_attributes = list(get_dataset(dataset).attributes)
    per_method = [(get_method(name), list(attributes or all_attributes)) for name in methods]
    count = sum(len(archs) * (len(attrs) if cls.uses_attribute else 1) * (1 if cls.seed_independent else len(seeds))
                for cls, attrs in per_method)
    if count > MAX_JOBS:
        raise SettingsError(f"{count:,} jobs ({len(methods)} method(s) × {len(archs)} arch(s) × attributes × "
                            f"{len(seeds)} seed(s)) is more than the {MAX_JOBS:,} one command may plan: every job is "
                            "a training run and planning holds them all in memory; split the work into several "
                            "commands or studies")
    jobs = []
    for cls, attrs in per_method:
        for arch in archs:
            for attr in attrs if cls.uses_attribute else [None]:
                # a seed-independent method (zero-shot scoring) runs once, under the first seed
                jobs.extend(Job(cls.name, arch, attr, seed) for seed in (seeds[:1] if cls.seed_independent else seeds))
    return jobs


def split_overrides(methods: list[str], overrides: dict[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Route each `--set key=value` to the methods that have `key`, else to the trainer; unknown keys fail.

    `method.key` / `train.key` force the destination when a name exists in both. Keys of nested settings
    groups are dotted (`group.field`) and routed whole.
    """
    from fairbench.method import did_you_mean, flat_settings
    from fairbench.training.settings import train_key

    train_fields = set(setting_names())
    method_fields = {m: set(flat_settings(get_method(m).Settings)) for m in methods}
    per_method: dict[str, dict[str, str]] = {m: {} for m in methods}
    train: dict[str, str] = {}
    for raw_key, value in overrides.items():
        scope, _, key = raw_key.partition(".") if raw_key.startswith(("method.", "train.")) else ("", "", raw_key)
        owners = [m for m in methods if key in method_fields[m]]
        if scope != "train" and owners:
            for m in owners:
                per_method[m][key] = value
        elif scope != "method" and train_key(key) in train_fields:
            train[train_key(key)] = value
        else:
            known = sorted(train_fields.union(*method_fields.values()))
            raise SettingsError(f"--set {raw_key}: no method in this run nor the trainer has that setting"
                                f"{did_you_mean(key, known)}; settable: {', '.join(known)}")
    return per_method, train


def plan(options: RunOptions, jobs: list[Job]) -> list[PlannedJob]:
    """Resolve every job's settings, config, hash and run folder; raises SettingsError/DatasetError before
    anything runs (and an UnknownNameError/InvalidNameError for an arch).

    Run-control trainer settings (`fairbench.training.settings.RUN_CONTROL_SETTINGS`) are left out of the config:
    they change no number, so they must not change the hash."""
    from fairbench.models.archs import get_arch
    from fairbench.protocols import get_protocol
    from fairbench.registry import UnknownNameError

    try:
        get_protocol(options.protocol)
    except UnknownNameError as exc:
        raise SettingsError(str(exc)) from None
    methods = list(dict.fromkeys(j.method for j in jobs))
    archs = list(dict.fromkeys(j.arch for j in jobs))
    for arch in archs:
        get_arch(arch)  # an unknown or unsafe arch name fails before the data is looked at
    for name in methods:  # e.g. a method that cannot swap its layers into this arch's towers: one line, now
        for arch in archs:
            get_method(name).check_arch(get_arch(arch))
    method_overrides, train_overrides = split_overrides(methods, options.overrides)
    settings = {arch: resolve_train_settings(arch, options.protocol, train_overrides, epochs=options.epochs,
                                             select=options.select) for arch in archs}
    spec = get_dataset(options.dataset)()
    text_source = spec.check_text_source(options.text_source)
    root = spec.resolve(options.data, options.cache_dir)
    identity = spec.identify(root, text_source)
    targets = _pretraining_targets(options, archs, spec.name)
    method_settings = {m: settings_dict(parse_settings(get_method(m).Settings, method_overrides.get(m, {}),
                                                       owner=f"method {m!r}")) for m in methods}
    # A dataset file travels with the jobs: a worker process registers it before it looks the dataset up by name.
    plugins = tuple(options.plugins) + ((spec.dataset_file,) if spec.dataset_file else ())
    planned = []
    for job in jobs:
        if job.attribute is not None and job.attribute not in spec.attributes:
            raise SettingsError(f"dataset {spec.name!r} has no attribute {job.attribute!r}; use one of "
                                f"{', '.join(spec.attributes)}")
        target = targets.get(job.arch)
        config = run_config(protocol=options.protocol, method=job.method, arch=job.arch, pretrained=options.pretrained,
                            attribute=job.attribute, text_source=text_source,
                            method_settings=method_settings[job.method], train=settings[job.arch],
                            pretraining=target.key if target is not None else None)
        h = config_hash({**config, "dataset": {"tag": identity.tag, "fingerprint": identity.fingerprint}})
        planned.append(PlannedJob(
            job=job, config=config, config_hash=h, out=Path(options.out),
            run_dir=run_dir(options.out, identity.tag, job.method, job.arch, job.attribute, h, job.seed),
            dataset=spec.name, data_root=root, data_tag=identity.tag, data_fingerprint=identity.fingerprint,
            synthetic=identity.synthetic, n_train=identity.n_train, cache_dir=options.cache_dir,
            method_overrides=method_overrides.get(job.method, {}), settings=settings[job.arch],
            plugins=plugins, protocol=options.protocol, pretraining=target))
    return planned


def _pretraining_targets(options: RunOptions, archs: list[str], dataset: str) -> dict[str, Any]:
    """arch → the pretrained start fairbench.training.pretrain builds for it (archs whose default weights it makes)."""
    if options.pretrained != "default":
        return {}
    from fairbench.training.pretrain import pretraining_target

    targets = {}
    for arch in archs:
        target = pretraining_target(arch, dataset, options.cache_dir)
        if target is not None:
            targets[arch] = target
    return targets
