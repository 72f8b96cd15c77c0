"""Execute one planned job in this process: load data, build the model, train, score and write the run folder.

Any process can call `execute` given a `PlannedJob` (a launcher's worker, a SLURM task, a test): it writes
config, history, predictions and, last and atomically, result.json, so the presence of a valid result.json
means the run finished.
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
from fairbench.jobs import PlannedJob
from fairbench.registry import get_dataset
from fairbench.results import (
    CONFIG_FILE,
    HISTORY_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    RESULT_SCHEMA,
    SELECTION_LABELS,
    atomic_path,
    write_json_atomic,
)

Progress = Callable[[int, int], None]


@dataclass
class JobResult:
    """What executing (or skipping) one job came to."""

    planned: PlannedJob
    status: str  # "done", "skipped", "failed"
    message: str = ""
    record: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.planned.run_dir

    @property
    def job(self):
        return self.planned.job


@dataclass
class DataCache:
    """Loaded datasets shared by the jobs one process executes (keyed by everything that changes the tensors)."""

    loaded: dict[tuple, Any] = field(default_factory=dict)

    def get(self, planned: PlannedJob):
        from fairbench.models.backbones import input_spec

        inputs = input_spec(planned.job.arch)
        text_source = planned.config["text_source"]
        key = (planned.dataset, str(planned.data_root), inputs.image_size, inputs.tokenizer_key, text_source)
        if key not in self.loaded:
            spec = get_dataset(planned.dataset)()
            data = spec.load(planned.data_root, image_size=inputs.image_size, tokenize=inputs.tokenize,
                             tokenizer_key=inputs.tokenizer_key, text_source=text_source,
                             cache_dir=planned.cache_dir)
            if data.fingerprint != planned.data_fingerprint:
                from fairbench.datasets import DatasetError

                raise DatasetError(f"{planned.data_root}: the data changed since the jobs were planned "
                                   f"(fingerprint {data.fingerprint} ≠ {planned.data_fingerprint}); run again")
            self.loaded[key] = data
        return self.loaded[key]


def execute(planned: PlannedJob, *, data_cache: DataCache | None = None, log: Callable[[str], None] = print,
            progress: Progress | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Train and evaluate one job unless a valid result exists; a diverged run is reported, not raised."""
    from fairbench.train import TrainingDiverged

    if planned.state() == "done":
        return JobResult(planned, "skipped", "finished run with this config exists")
    data = (data_cache or DataCache()).get(planned)
    try:
        record = _train_and_write(planned, data, log, progress, on_epoch)
    except TrainingDiverged as exc:
        return JobResult(planned, "failed", f"{exc} (history so far kept in {planned.run_dir / HISTORY_FILE})")
    return JobResult(planned, "done", record=record)


def _train_and_write(planned: PlannedJob, data, log: Callable[[str], None], progress: Progress | None,
                     epoch_hook: Callable[[dict[str, Any]], None] | None) -> dict:
    import torch

    from fairbench.datasets import normalize_images
    from fairbench.metrics import evaluate
    from fairbench.models import create_backbone
    from fairbench.models.backbones import default_weights_built_here
    from fairbench.provenance import code_version
    from fairbench.train import SplitData, pick_device, seed_everything, train

    job, path, config = planned.job, planned.run_dir, planned.config
    spec = get_dataset(planned.dataset)
    method = planned.method_instance()
    settings = planned.train_settings()
    t_start = time.perf_counter()
    device = pick_device()
    weights = config["pretrained"]
    pretrained_info = None
    if planned.pretraining is not None:
        from fairbench.pretrain import ensure_pretrained

        pretrained_info = ensure_pretrained(planned.pretraining, planned.cache_dir)
        weights = pretrained_info["path"]
    elif weights == "default" and default_weights_built_here(job.arch):
        weights = None  # the dataset has no pretraining set: the arch starts from random init
    seed_everything(job.seed)  # the random init of `tiny` (and any new layers) depends on the seed
    backbone = create_backbone(job.arch, pretrained=weights, device="cpu")
    model = method.build(backbone.model)
    path.mkdir(parents=True, exist_ok=True)  # only once the model exists: a failed build leaves no run folder
    write_json_atomic(path / CONFIG_FILE, {**config, "seed": job.seed, "config_hash": planned.config_hash,
                                           "dataset": _dataset_info(planned, data)})
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
        if epoch_hook:
            epoch_hook(record)

    outcome = train(method, model, settings, train_data=split(data.train), val_data=split(data.val),
                    test_data=split(data.test), normalize=normalize, tokenize=backbone.tokenize,
                    prompts=spec.prompts, label=spec.label, seed=job.seed, device=device, auc=_auc,
                    on_epoch=on_epoch, progress=progress)
    for w in outcome.warnings:
        log(f"[yellow]warning[/]: {job.label()}: {w}")
    suites = {}
    for name, s, scores in (("val", data.val, outcome.val_scores), ("test", data.test, outcome.test_scores)):
        attrs = {a: s.attributes[a].numpy() for a in spec.attributes}
        _write_predictions(path / PREDICTIONS_FILE.format(split=name), s.sample_ids, s.labels.numpy(), scores,
                           attrs)
        suites[name] = evaluate(s.labels.numpy(), scores, attrs, group_names=spec.attributes).to_dict()
    files = {"config": CONFIG_FILE, "history": HISTORY_FILE,
             "predictions_val": PREDICTIONS_FILE.format(split="val"),
             "predictions_test": PREDICTIONS_FILE.format(split="test")}
    if outcome.state_dict is not None:
        torch.save(outcome.state_dict, path / "checkpoint.pt")
        files["checkpoint"] = "checkpoint.pt"
    record = {
        "schema": RESULT_SCHEMA,
        "run_id": str(path.relative_to(planned.out)) if path.is_relative_to(planned.out) else str(path),
        "method": job.method,
        "arch": job.arch,
        "attribute": job.attribute,
        "seed": job.seed,
        "dataset": _dataset_info(planned, data),
        "config": config,
        "config_hash": planned.config_hash,
        "pretrained": pretrained_info or {"weights": weights or "random init"},
        "selection": {"rule": settings.select, "metric": "auc", "epoch": outcome.best_epoch,
                      "label": SELECTION_LABELS[settings.select]},
        "metrics": suites,
        "epochs_trained": len(outcome.history),
        "warnings": outcome.warnings,
        "versions": _versions(),
        "code": code_version(),
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


def _dataset_info(planned: PlannedJob, data) -> dict[str, Any]:
    return {
        "name": planned.dataset,
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
