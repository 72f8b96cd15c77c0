"""Execute one planned job in this process: load data, build the model, train, score and write the run folder.

Any process can call `execute` given a `PlannedJob` (a launcher's worker, a SLURM task, a test): it writes
config, history, predictions and, last and atomically, result.json, so the presence of a valid result.json
means the run finished. Everything that makes runs safe to launch from anywhere lives here, so every launcher
gets it: the run is claimed first (`fairbench.runs.claims`; a run another live process trains is skipped), a
result.json that does not load is moved aside and the run trained again, the training state is saved after
every epoch and a rerun resumes from it (`fairbench.runs.state`), and a failure leaves `failure.json`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fairbench import __version__
from fairbench.files import atomic_path, write_json_atomic
from fairbench.registry import get_dataset
from fairbench.runs.claims import Claim, ClaimedElsewhere, ClaimInfo, acquire
from fairbench.runs.interrupt import Interrupted, StoppedRun, uninterrupted
from fairbench.runs.jobs import PlannedJob
from fairbench.runs.results import (
    CONFIG_FILE,
    FAILURE_FILE,
    HISTORY_FILE,
    PREDICTIONS_FILE,
    RESULT_FILE,
    RESULT_SCHEMA,
    STATE_FILE,
)
from fairbench.selection import selection_label

StepProgress = Callable[[int, int], None]  # (steps done, steps in the run)


@dataclass
class JobResult:
    """What executing (or skipping) one job came to."""

    planned: PlannedJob
    status: str  # "done", "skipped", "failed"
    message: str = ""
    record: dict[str, Any] | None = None
    holder: ClaimInfo | None = None  # set when skipped because another live process is training the run

    @property
    def path(self) -> Path:
        return self.planned.run_dir

    @property
    def job(self):
        return self.planned.job


@dataclass
class DataCache:
    """Loaded datasets shared by the jobs one process executes (keyed by everything that changes the tensors).

    A load that failed on the data (DatasetError) or the disk (OSError) fails every later job on the same data at
    once with the same error, instead of reading the whole dataset again to fail the same way."""

    loaded: dict[tuple, Any] = field(default_factory=dict)
    failed: dict[tuple, BaseException] = field(default_factory=dict)

    def get(self, planned: PlannedJob):
        from fairbench.datasets import DatasetError
        from fairbench.models.backbones import input_spec

        inputs = input_spec(planned.job.arch)
        text_source = planned.config["text_source"]
        key = (planned.dataset, str(planned.data_root), inputs.image_size, inputs.tokenizer_key, text_source)
        if key in self.failed:
            raise self.failed[key]
        try:
            return self._load(planned, key, inputs, text_source)
        except (DatasetError, OSError) as exc:
            self.failed[key] = exc
            raise

    def _load(self, planned: PlannedJob, key: tuple, inputs, text_source: str):
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


class ClaimLost(RuntimeError):
    """Another process took this run's claim over (ours looked dead to it): stop, it continues the run."""


@dataclass
class SavedEpochs:
    """How many epochs of the run its saved state holds: what a failure or an interrupt reports."""

    epochs_done: int = 0


def execute(planned: PlannedJob, *, data_cache: DataCache | None = None, log: Callable[[str], None] = print,
            progress: StepProgress | None = None,
            on_epoch: Callable[[dict[str, Any]], None] | None = None) -> JobResult:
    """Train and evaluate one job unless a valid result exists or another live process is training it; resume
    from its saved state if an earlier attempt stopped. A diverged run is reported, not raised."""
    from fairbench.training.trainer import TrainingDiverged

    if planned.state() == "done":
        return JobResult(planned, "skipped", "finished run with this config exists")
    _check_training_data(planned, data_cache)
    created = _make_dirs(planned.run_dir)
    try:
        claim = acquire(planned.run_dir)
    except ClaimedElsewhere as exc:
        return JobResult(planned, "skipped", str(exc), holder=exc.info)
    point = SavedEpochs()
    event = "released"
    try:
        if planned.state() == "done":  # another process finished it between our check and our claim
            return JobResult(planned, "skipped", "finished run with this config exists")
        _set_aside_invalid_result(planned, log)
        _remove_partial_writes(planned.run_dir)
        claim.start_heartbeat()
        data = (data_cache or DataCache()).get(planned)
        record = _train_and_write(planned, data, log, progress, on_epoch, claim, point)
        event = "released (done)"
    except TrainingDiverged as exc:
        event = "released (failed: diverged)"
        _write_failure(planned, exc, point)
        return JobResult(planned, "failed", f"{exc} (history so far kept in {planned.run_dir / HISTORY_FILE})")
    except ClaimLost as exc:
        event = "stopped (claim lost)"
        return JobResult(planned, "skipped", str(exc))
    except Interrupted as exc:
        event = f"released (interrupted by {exc}, {point.epochs_done} epoch(s) saved)"
        exc.run = StoppedRun(planned.label(), planned.run_dir, point.epochs_done, planned.settings.epochs)
        raise
    except (KeyboardInterrupt, SystemExit) as exc:  # stopped, not failed: no failure.json
        event = f"released (stopped: {type(exc).__name__})"
        raise
    except BaseException as exc:
        event = f"released (failed: {type(exc).__name__})"
        _write_failure(planned, exc, point)
        raise
    finally:
        with contextlib.suppress(OSError):  # a full or read-only disk: the failure itself is what gets reported
            claim.release(event)
        _remove_if_unused(planned.run_dir, created)
    return JobResult(planned, "done", record=record)


def _check_training_data(planned: PlannedJob, data_cache: DataCache | None) -> None:
    """A method that checks its training labels (`Method.check_training_labels`, e.g. a linear probe on one class)
    does so before the run folder is made; the data it loads is kept in `data_cache` for the run itself."""
    from fairbench.method import Method

    method = planned.method_instance()
    if type(method).check_training_labels is Method.check_training_labels:
        return
    data = (data_cache or DataCache()).get(planned)
    method.check_training_labels(data.train.labels.numpy())


def tidy_done(planned: PlannedJob) -> list[str]:
    """Tidy the finished run folder of `planned` (fairbench.runs.tidy); the names removed."""
    from fairbench.runs.results import CorruptResultError, load_result
    from fairbench.runs.tidy import tidy_finished

    try:
        return tidy_finished(planned.run_dir, load_result(planned.result_path))
    except (CorruptResultError, OSError):
        return []


def _make_dirs(path: Path) -> Path | None:
    """mkdir -p; returns the topmost folder this call created (None if `path` existed)."""
    top = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        top = folder
    path.mkdir(parents=True, exist_ok=True)
    return top


def _remove_if_unused(run_dir: Path, created: Path | None) -> None:
    """A run stopped before writing its config (and without a failure to report) leaves no folder (only the claim
    log was in it); folders are removed only while empty, so a sibling run another process started in a shared
    parent is never touched."""
    if created is None or (run_dir / CONFIG_FILE).exists() or (run_dir / FAILURE_FILE).exists():
        return
    from fairbench.runs.claims import CLAIM_LOG

    (run_dir / CLAIM_LOG).unlink(missing_ok=True)
    folder = run_dir
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent


def _remove_partial_writes(run_dir: Path) -> None:
    """Temp files a killed process left half-written (we hold the claim, so no one else is writing them; claim
    temp files belong to contenders and stay)."""
    from fairbench.runs.claims import CLAIM_FILE

    for tmp in run_dir.glob(".*.tmp"):
        if not tmp.name.startswith(f".{CLAIM_FILE}."):
            tmp.unlink(missing_ok=True)


def _set_aside_invalid_result(planned: PlannedJob, log: Callable[[str], None]) -> None:
    """A result.json that does not load does not count as finished: keep it under another name and train again."""
    if planned.state() != "invalid":
        return
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = planned.result_path.with_name(f"{RESULT_FILE}.invalid-{stamp}")
    os.replace(planned.result_path, aside)
    log(f"[yellow]warning[/]: {planned.label()}: {planned.result_path} did not load; moved it to {aside.name} "
        "and training the run again")


def _write_failure(planned: PlannedJob, exc: BaseException, point: SavedEpochs) -> None:
    """failure.json: why the attempt failed (also before config.json exists: bad data, an unreadable checkpoint),
    so `fairbench status` names the reason; nothing if the folder cannot be written."""
    if not planned.run_dir.is_dir():
        return
    with contextlib.suppress(OSError):
        write_json_atomic(planned.run_dir / FAILURE_FILE, {
            "error": f"{type(exc).__name__}: {exc}", "epochs_done": point.epochs_done,
            "host": socket.gethostname(), "pid": os.getpid(),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def _load_resume_state(planned: PlannedJob, log: Callable[[str], None]):
    """The saved training state to resume from, or None. A damaged one (digest mismatch, non-finite weights) is
    named in one warning and set aside as train_state.pt.damaged (removed once the run finishes), never used."""
    from fairbench.runs.state import DamagedState, StateError, load_state
    from fairbench.runs.tidy import DAMAGED_STATE

    path = planned.run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state = load_state(path, planned.config_hash)
    except DamagedState as exc:
        os.replace(path, path.with_name(DAMAGED_STATE))
        log(f"[yellow]warning[/]: {planned.label()}: {exc}; set it aside as {DAMAGED_STATE} and training from the "
            "first epoch (the only earlier good state)")
        return None
    except StateError as exc:
        log(f"[yellow]warning[/]: {planned.label()}: {exc}; training from the first epoch")
        return None
    log(f"resuming {planned.label()} after epoch {state.epochs_done} (state in {path})")
    return state


def _train_and_write(planned: PlannedJob, data, log: Callable[[str], None], progress: StepProgress | None,
                     epoch_hook: Callable[[dict[str, Any]], None] | None, claim: Claim, point: SavedEpochs) -> dict:
    import torch

    from fairbench.metrics import evaluate, overall_auc
    from fairbench.models import create_backbone
    from fairbench.models.backbones import default_weights_built_here
    from fairbench.runs.provenance import code_version
    from fairbench.runs.state import save_state
    from fairbench.training.sampling import resolved_sampling
    from fairbench.training.trainer import SplitData, pick_device, seed_everything, train

    job, path, config = planned.job, planned.run_dir, planned.config
    spec = get_dataset(planned.dataset)
    method = planned.method_instance()
    settings = planned.settings
    t_start = time.perf_counter()
    device = pick_device()
    weights = config["pretrained"]
    pretrained_info = None
    if planned.pretraining is not None:
        from fairbench.training.pretrain import ensure_pretrained

        pretrained_info = ensure_pretrained(planned.pretraining, planned.cache_dir)
        weights = pretrained_info["path"]
    elif weights == "default" and default_weights_built_here(job.arch):
        weights = None  # the dataset has no pretraining set: the arch starts from random init
    seed_everything(job.seed)  # the random init of `tiny` (and any new layers) depends on the seed
    backbone = create_backbone(job.arch, pretrained=weights, device="cpu")
    model = method.build(backbone.model)
    adapted: list[str] = []
    if settings.adapter == "lora":
        from fairbench.models.adapters import apply_lora, trainable_names

        model = apply_lora(model, backbone.model, settings.adapter_rank, settings.adapter_alpha)
        adapted = trainable_names(model)
    write_json_atomic(path / CONFIG_FILE, {**config, "seed": job.seed, "config_hash": planned.config_hash,
                                           "dataset": _dataset_info(planned, data)})
    resume = _load_resume_state(planned, log)
    point.epochs_done = resume.epochs_done if resume else 0
    claim.log(f"training from epoch {point.epochs_done + 1}" if point.epochs_done < settings.epochs
              else "finishing (every epoch saved)")
    normalize = backbone.normalizer(device)

    def split(s) -> SplitData:
        groups = s.attributes[job.attribute] if job.attribute else None
        return SplitData(images=s.images, tokens=s.tokens, labels=s.labels, groups=groups,
                         attributes=dict(s.attributes))

    history: list[dict[str, Any]] = list(resume.history) if resume else []

    def on_epoch(record: dict[str, Any]) -> None:
        history.append(record)
        if epoch_hook:
            epoch_hook(record)

    def on_epoch_state(state) -> None:  # the state first: history.json never counts an epoch the state lacks
        with uninterrupted():  # a stop waits for the save, so the epoch is kept and reported exactly
            save_state(path / STATE_FILE, state, planned.config_hash)
            point.epochs_done = state.epochs_done
            write_json_atomic(path / HISTORY_FILE, history)
        if not claim.beat(epoch=state.epochs_done):
            holder = claim.lost_to.owner() if claim.lost_to else "another process"
            raise ClaimLost(f"stopped after epoch {state.epochs_done}: {holder} took the run over (this process "
                            "looked dead to it) and continues it")

    from fairbench.digests import value_digest
    from fairbench.training.context import FitContext

    context = FitContext(settings=settings, train=split(data.train), val=split(data.val), test=split(data.test),
                         normalize=normalize, tokenize=backbone.tokenize, prompts=spec.prompts, device=device,
                         auc=overall_auc, seed=job.seed, cache_dir=planned.cache_dir, log=log,
                         data_key=value_digest([data.fingerprint, backbone.image_size, list(backbone.mean),
                                                list(backbone.std)]))
    outcome = method.fit(model, context)  # a mode that does not fine-tune (zero-shot, linear probe)
    if outcome is None:
        outcome = train(method, model, settings, train_data=context.train, val_data=context.val,
                        test_data=context.test, normalize=normalize, tokenize=backbone.tokenize,
                        prompts=spec.prompts, label=spec.label, seed=job.seed, device=device, auc=overall_auc,
                        on_epoch=on_epoch, progress=progress, resume=resume, on_epoch_state=on_epoch_state)
    else:
        write_json_atomic(path / HISTORY_FILE, outcome.history)
    del resume
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
    if outcome.state_dict is not None and settings.checkpoint:
        torch.save(outcome.state_dict, path / "checkpoint.pt")
        files["checkpoint"] = "checkpoint.pt"
    if adapted and outcome.state_dict is not None:
        from fairbench.models.adapters import save_adapter

        saved = save_adapter(path, outcome.state_dict, adapted, {
            "adapter": settings.adapter, "rank": settings.adapter_rank, "alpha": settings.adapter_alpha,
            "tensors": len(adapted)})
        files["adapter"], files["adapter_info"] = saved
    if settings.keep_state:
        files["state"] = STATE_FILE  # kept on purpose: `fairbench.runs.tidy` leaves it
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
        "selection": {"rule": settings.select, "metric": "auc",
                      "epoch": outcome.best_epoch if outcome.best_epoch >= 0 else None,
                      "label": selection_label(settings.select)},
        "mode": run_mode(method, settings),
        "single_run": bool(method.seed_independent),
        "trainable_parameters": outcome.trainable_parameters,
        **({"fit": outcome.details} if outcome.details else {}),
        "metrics": suites,
        "sampling": resolved_sampling(settings.sampling, method),
        "epochs_trained": len(outcome.history) if method.mode == "fine-tune" else 0,
        "warnings": outcome.warnings,
        "versions": _versions(),
        "code": code_version(),
        "device": _device_name(device),
        "timings": {"train_s": outcome.train_seconds, "eval_s": outcome.eval_seconds,
                    "total_s": time.perf_counter() - t_start},
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }
    if not claim.beat():
        raise ClaimLost("stopped before writing result.json: another process took the run over")
    write_json_atomic(path / RESULT_FILE, record)  # last: its presence marks the run finished
    from fairbench.runs.tidy import DAMAGED_STATE

    (path / FAILURE_FILE).unlink(missing_ok=True)
    (path / DAMAGED_STATE).unlink(missing_ok=True)
    if not settings.keep_state:
        (path / STATE_FILE).unlink(missing_ok=True)
    return record


def run_mode(method, settings) -> str:
    """The usage mode a run's rows are labelled with: the method's, or the adapter's for a fine-tune with one."""
    if method.mode == "fine-tune" and settings.adapter != "none":
        return settings.adapter
    return method.mode


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
