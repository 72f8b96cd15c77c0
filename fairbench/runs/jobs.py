"""Pure planning: from a command line's (methods × archs × attributes × seeds) to jobs with run folders.

A planned job carries everything another process needs to execute it — its resolved config, the config
hash, its run folder, the dataset's identity — and planning loads no tensor: the dataset fingerprint comes
from file names, sizes and checksums (`Dataset.identify`). Launchers take planned jobs; `fairbench.runs.execute`
runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairbench.method import Method, SettingsError, convert_value, parse_settings, settings_dict
from fairbench.registry import get_dataset, get_method
from fairbench.runs.results import RESULT_FILE, CorruptResultError, config_hash, load_result, run_dir


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
    method_overrides: dict[str, str]
    train_overrides: dict[str, str]
    epochs: int | None
    select: str | None
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
        n_groups = len(get_dataset(self.dataset).attributes[self.job.attribute]) if self.job.attribute else 0
        return cls(settings, self.job.attribute, n_groups)

    def train_settings(self):
        return train_settings_for(self.job.arch, self.train_overrides, self.epochs, self.select, self.protocol)


def expand_jobs(methods: list[str], archs: list[str], attributes: list[str] | None, seeds: list[int],
                dataset: str | None = None) -> list[Job]:
    """A method that trains on an attribute runs once per attribute (default: all of the dataset's); one that
    uses none runs once per seed."""
    all_attributes = list(get_dataset(dataset).attributes)
    jobs = []
    for name in methods:
        cls = get_method(name)
        attrs: list[str | None] = list(attributes or all_attributes) if cls.uses_attribute else [None]
        for arch in archs:
            for attr in attrs:
                jobs.extend(Job(cls.name, arch, attr, seed) for seed in seeds)
    return jobs


def split_overrides(methods: list[str], overrides: dict[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Route each `--set key=value` to the methods that have `key`, else to the trainer; unknown keys fail.

    `method.key` / `train.key` force the destination when a name exists in both. Keys of nested settings
    groups are dotted (`group.field`) and routed whole.
    """
    from fairbench.method import did_you_mean, flat_settings
    from fairbench.training.trainer import TrainSettings

    train_fields = set(flat_settings(TrainSettings))
    method_fields = {m: set(flat_settings(get_method(m).Settings)) for m in methods}
    per_method: dict[str, dict[str, str]] = {m: {} for m in methods}
    train: dict[str, str] = {}
    for raw_key, value in overrides.items():
        scope, _, key = raw_key.partition(".") if raw_key.startswith(("method.", "train.")) else ("", "", raw_key)
        owners = [m for m in methods if key in method_fields[m]]
        if scope != "train" and owners:
            for m in owners:
                per_method[m][key] = value
        elif scope != "method" and key in train_fields:
            train[key] = value
        else:
            known = sorted(train_fields.union(*method_fields.values()))
            raise SettingsError(f"--set {raw_key}: no method in this run nor the trainer has that setting"
                                f"{did_you_mean(key, known)}; settable: {', '.join(known)}")
    return per_method, train


def train_settings_for(arch: str, overrides: dict[str, str], epochs: int | None, select: str | None,
                       protocol: str = "fairbench"):
    """The trainer settings of one job: the arch's defaults, then the protocol's, then `--set`, then
    --epochs/--select."""
    from fairbench.protocols import get_protocol
    from fairbench.training.trainer import TrainSettings, default_train_settings

    base = {**default_train_settings(arch), **get_protocol(protocol).train}
    defaults = TrainSettings(**base)
    values = dict(base)
    for key, raw in overrides.items():
        values[key] = convert_value(raw, getattr(defaults, key), f"trainer setting {key!r}")
    if epochs is not None:
        values["epochs"] = epochs
    if select is not None:
        values["select"] = select
    return TrainSettings(**values)


def plan(options: RunOptions, jobs: list[Job]) -> list[PlannedJob]:
    """Resolve every job's config, hash and run folder; raises SettingsError/DatasetError before anything runs.

    Run-control trainer settings (`fairbench.training.trainer.RUN_CONTROL_SETTINGS`) are left out of the config: they
    change no number, so they must not change the hash."""
    from fairbench.protocols import get_protocol
    from fairbench.training.trainer import RUN_CONTROL_SETTINGS

    try:
        get_protocol(options.protocol)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    methods = list(dict.fromkeys(j.method for j in jobs))
    method_overrides, train_overrides = split_overrides(methods, options.overrides)
    spec = get_dataset(options.dataset)()
    text_source = spec.check_text_source(options.text_source)
    root = spec.resolve(options.data, options.cache_dir)
    identity = spec.identify(root, text_source)
    targets = _pretraining_targets(options, jobs, spec.name)
    planned = []
    for job in jobs:
        cls = get_method(job.method)
        method_settings = parse_settings(cls.Settings, method_overrides.get(job.method, {}),
                                         owner=f"method {job.method!r}")
        if job.attribute is not None and job.attribute not in spec.attributes:
            raise SettingsError(f"dataset {spec.name!r} has no attribute {job.attribute!r}; use one of "
                                f"{', '.join(spec.attributes)}")
        settings = train_settings_for(job.arch, train_overrides, options.epochs, options.select, options.protocol)
        train_config = {k: v for k, v in settings_dict(settings).items() if k not in RUN_CONTROL_SETTINGS}
        config = {
            "protocol": options.protocol,
            "method": job.method,
            "arch": job.arch,
            "pretrained": options.pretrained,
            "attribute": job.attribute,
            "text_source": text_source,
            "method_settings": settings_dict(method_settings),
            "train": train_config,
        }
        target = targets.get(job.arch)
        if target is not None:  # the checkpoint's key (recipe, data, torch) makes a new pretraining a new run folder
            config["pretraining"] = target.key
        h = config_hash({**config, "dataset": {"tag": identity.tag, "fingerprint": identity.fingerprint}})
        planned.append(PlannedJob(
            job=job, config=config, config_hash=h, out=Path(options.out),
            run_dir=run_dir(options.out, identity.tag, job.method, job.arch, job.attribute, h, job.seed),
            dataset=spec.name, data_root=root, data_tag=identity.tag, data_fingerprint=identity.fingerprint,
            synthetic=identity.synthetic, n_train=identity.n_train, cache_dir=options.cache_dir,
            method_overrides=method_overrides.get(job.method, {}), train_overrides=train_overrides,
            epochs=options.epochs, select=options.select, plugins=tuple(options.plugins),
            protocol=options.protocol, pretraining=target))
    return planned


def _pretraining_targets(options: RunOptions, jobs: list[Job], dataset: str) -> dict[str, Any]:
    """arch → the pretrained start fairbench.training.pretrain builds for it (archs whose default weights it makes)."""
    if options.pretrained != "default":
        return {}
    from fairbench.training.pretrain import pretraining_target

    targets = {}
    for arch in dict.fromkeys(j.arch for j in jobs):
        target = pretraining_target(arch, dataset, options.cache_dir)
        if target is not None:
            targets[arch] = target
    return targets
