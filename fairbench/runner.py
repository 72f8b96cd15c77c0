"""From a command line's (methods × archs × attributes × seeds) to finished run folders.

Each job: resolve its config → skip if a finished result with the same config exists → load data
(cached tensors, shared across jobs) → build backbone and method → train with the shared trainer →
score → metrics → write config, history, predictions and, last and atomically, result.json.
"""

from __future__ import annotations

import csv
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fairbench import __version__
from fairbench.attributes import ATTRIBUTE_GROUPS, ATTRIBUTES
from fairbench.method import Method, SettingsError, convert_value, parse_settings, settings_dict
from fairbench.registry import get_method
from fairbench.results import (
    CONFIG_FILE,
    HISTORY_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    RESULT_SCHEMA,
    SELECTION_LABELS,
    atomic_path,
    config_hash,
    run_dir,
    write_json_atomic,
)


@dataclass(frozen=True)
class Job:
    method: str
    arch: str
    attribute: str | None
    seed: int

    def label(self) -> str:
        return f"{self.method} {self.arch} {self.attribute or '-'} seed{self.seed}"


def expand_jobs(methods: list[str], archs: list[str], attributes: list[str] | None, seeds: list[int]) -> list[Job]:
    """A method that trains on an attribute runs once per attribute; one that uses none runs once per seed."""
    jobs = []
    for name in methods:
        cls = get_method(name)
        attrs: list[str | None] = list(attributes or ATTRIBUTES) if cls.uses_attribute else [None]
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
    from fairbench.train import TrainSettings

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


def train_settings_for(arch: str, overrides: dict[str, str], epochs: int | None, select: str | None):
    from fairbench.train import TrainSettings, default_train_settings

    base = {**default_train_settings(arch)}
    defaults = TrainSettings(**base)
    values = dict(base)
    for key, raw in overrides.items():
        values[key] = convert_value(raw, getattr(defaults, key), f"trainer setting {key!r}")
    if epochs is not None:
        values["epochs"] = epochs
    if select is not None:
        values["select"] = select
    return TrainSettings(**values)


@dataclass
class RunOptions:
    """Everything a `fairbench run` invocation fixes for all its jobs."""

    out: Path
    data: str | None = None
    pretrained: str | None = "default"
    text_source: str = "gpt4"
    epochs: int | None = None
    select: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None


@dataclass
class JobResult:
    job: Job
    status: str  # "done", "skipped", "failed"
    path: Path | None = None
    message: str = ""
    record: dict[str, Any] | None = None


class Runner:
    """Runs jobs one after another, sharing loaded datasets between jobs of the same input pipeline."""

    def __init__(self, options: RunOptions, methods: list[str],
                 log: Callable[[str], None] = print) -> None:
        self.options = options
        self.method_overrides, self.train_overrides = split_overrides(methods, options.overrides)
        self.log = log
        self._data_cache: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ planning
    def plan(self, job: Job) -> tuple[dict[str, Any], Method, Any]:
        """The job's resolved config (what the hash covers), its method instance and trainer settings."""
        cls = get_method(job.method)
        method_settings = parse_settings(cls.Settings, self.method_overrides.get(job.method, {}),
                                         owner=f"method {job.method!r}")
        n_groups = len(ATTRIBUTE_GROUPS[job.attribute]) if job.attribute else 0
        method = cls(method_settings, job.attribute, n_groups)
        settings = train_settings_for(job.arch, self.train_overrides, self.options.epochs, self.options.select)
        config = {
            "method": job.method,
            "arch": job.arch,
            "pretrained": self.options.pretrained,
            "attribute": job.attribute,
            "text_source": self.options.text_source,
            "method_settings": settings_dict(method_settings),
            "train": settings_dict(settings),
        }
        return config, method, settings

    def dataset_for(self, arch: str):
        """Load (or reuse) the dataset tensors for this arch's image size and tokenizer."""
        from fairbench.data import load_fairvlmed, resolve_dataset_path
        from fairbench.models.backbones import input_spec

        inputs = input_spec(arch)
        image_size, tokenize, tokenizer_key = inputs.image_size, inputs.tokenize, inputs.tokenizer_key
        root = resolve_dataset_path(self.options.data)
        key = (str(root), image_size, tokenizer_key, self.options.text_source)
        if key not in self._data_cache:
            self._data_cache[key] = load_fairvlmed(root, image_size=image_size, tokenize=tokenize,
                                                   tokenizer_key=tokenizer_key, text_source=self.options.text_source,
                                                   cache_dir=self.options.cache_dir)
        return self._data_cache[key]

    def job_dir(self, job: Job, config: dict[str, Any], data) -> tuple[Path, str]:
        full = {**config, "dataset": {"tag": data.tag, "fingerprint": data.fingerprint}}
        h = config_hash(full)
        return run_dir(self.options.out, data.tag, job.method, job.arch, job.attribute, h, job.seed), h

    # ------------------------------------------------------------------ running
    def run(self, job: Job, progress: Callable[[int, int], None] | None = None) -> JobResult:
        config, method, settings = self.plan(job)
        data = self.dataset_for(job.arch)
        path, h = self.job_dir(job, config, data)
        if (path / RESULT_FILE).exists():
            return JobResult(job, "skipped", path, "finished run with this config exists")
        from fairbench.train import TrainingDiverged

        try:
            record = self._train_and_write(job, config, h, method, settings, data, path, progress)
        except TrainingDiverged as exc:
            return JobResult(job, "failed", path, f"{exc} (history so far kept in {path / HISTORY_FILE})")
        return JobResult(job, "done", path, record=record)

    def _train_and_write(self, job, config, h, method, settings, data, path: Path, progress) -> dict[str, Any]:
        import torch

        from fairbench.data import normalize_images
        from fairbench.metrics import evaluate
        from fairbench.models import create_backbone
        from fairbench.train import SplitData, pick_device, seed_everything, train

        t_start = time.perf_counter()
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / CONFIG_FILE, {**config, "seed": job.seed, "config_hash": h,
                                               "dataset": _dataset_info(data)})
        device = pick_device()
        seed_everything(job.seed)  # the random init of `tiny` (and any new layers) depends on the seed
        backbone = create_backbone(job.arch, pretrained=self.options.pretrained, device="cpu")
        model = method.build(backbone.model)
        mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)
        normalize = lambda x: normalize_images(x, mean, std)  # noqa: E731

        def split(s) -> SplitData:
            groups = s.attributes[job.attribute] if job.attribute else None
            return SplitData(images=s.images, tokens=s.tokens, labels=s.labels, groups=groups)

        history: list[dict[str, Any]] = []

        def on_epoch(record: dict[str, Any]) -> None:
            history.append(record)
            write_json_atomic(path / HISTORY_FILE, history)

        outcome = train(method, model, settings, train_data=split(data.train), val_data=split(data.val),
                        test_data=split(data.test), normalize=normalize, tokenize=backbone.tokenize,
                        seed=job.seed, device=device, auc=_auc, on_epoch=on_epoch, progress=progress)
        for w in outcome.warnings:
            self.log(f"[yellow]warning[/]: {job.label()}: {w}")
        suites = {}
        for name, s, scores in (("val", data.val, outcome.val_scores), ("test", data.test, outcome.test_scores)):
            attrs = {a: s.attributes[a].numpy() for a in ATTRIBUTES}
            _write_predictions(path / PREDICTIONS_FILE.format(split=name), s.filenames, s.labels.numpy(), scores,
                               attrs)
            suites[name] = evaluate(s.labels.numpy(), scores, attrs).to_dict()
        files = {"config": CONFIG_FILE, "history": HISTORY_FILE,
                 "predictions_val": PREDICTIONS_FILE.format(split="val"),
                 "predictions_test": PREDICTIONS_FILE.format(split="test")}
        if outcome.state_dict is not None:
            torch.save(outcome.state_dict, path / "checkpoint.pt")
            files["checkpoint"] = "checkpoint.pt"
        record = {
            "schema": RESULT_SCHEMA,
            "run_id": str(path.relative_to(self.options.out)) if path.is_relative_to(self.options.out) else str(path),
            "method": job.method,
            "arch": job.arch,
            "attribute": job.attribute,
            "seed": job.seed,
            "dataset": _dataset_info(data),
            "config": config,
            "config_hash": h,
            "selection": {"rule": settings.select, "metric": "auc", "epoch": outcome.best_epoch,
                          "label": SELECTION_LABELS[settings.select]},
            "metrics": suites,
            "epochs_trained": len(outcome.history),
            "warnings": outcome.warnings,
            "versions": _versions(),
            "device": _device_name(device),
            "timings": {"train_s": outcome.train_seconds, "eval_s": outcome.eval_seconds,
                        "total_s": time.perf_counter() - t_start},
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
        }
        write_json_atomic(path / RESULT_FILE, record)  # last: its presence marks the run finished
        return record


def _auc(labels, scores) -> float:
    """Per-epoch AUC for selection, from the metric suite; NaN (with its warning) when a split has one class."""
    from fairbench.metrics import evaluate

    return float(evaluate(labels, scores, {}).auc)


def _write_predictions(path: Path, samples: list[str], labels, scores, attributes: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample", "label", "score", *attributes])
        codes = zip(*(attributes[a].tolist() for a in attributes), strict=True)
        writer.writerows([s, int(y), repr(float(p)), *c]
                         for s, y, p, c in zip(samples, labels.tolist(), scores.tolist(), codes, strict=True))


def _dataset_info(data) -> dict[str, Any]:
    return {
        "tag": data.tag,
        "synthetic": bool(data.synthetic),
        "path": str(data.root),
        "fingerprint": data.fingerprint,
        "n": {s: int(getattr(data, s).labels.shape[0]) for s in ("train", "val", "test")},
        "n_dropped": {s: int(getattr(data, s).n_dropped) for s in ("val", "test")},
    }


def _versions() -> dict[str, str]:
    import numpy
    import torch

    out = {"fairbench": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform()}
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except ImportError:  # pragma: no cover - open_clip is a dependency
        pass
    return out


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
