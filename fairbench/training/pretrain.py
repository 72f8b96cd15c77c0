"""A pretrained start for archs without published weights (`tiny`), so every method fine-tunes from
pretrained CLIP, as in the real study, even in the CPU demo.

The run's dataset supplies a pretraining set (`Dataset.pretraining_data`, disjoint from the data runs use);
this module CLIP-pretrains the arch on its training split with every parameter trainable and caches the
weights once under the fairbench cache, keyed by everything that changes them (arch, recipe, pretraining data
fingerprint, torch version). Same key → same bytes on the same machine: the init and the batch order are
seeded. The key enters each run's config hash; the provenance (path, SHA-256, recipe, zero-shot validation
AUC) goes into result.json. The weights' SHA-256 is checked against the provenance on every use: a damaged
checkpoint is named in one warning and built again, never loaded. The build writes to a temporary folder and
renames it, so a reader never sees half a checkpoint, and it is claimed (`fairbench.runs.claims.build_once`), so
commands started side by side on an empty cache pretrain once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fairbench.models.archs import PretrainRecipe, get_arch

log = logging.getLogger("fairbench")

PRETRAIN_VERSION = 1  # bump when the pretraining code changes what it produces
WEIGHTS_FILE = "weights.safetensors"
PROVENANCE_FILE = "provenance.json"


# The recipe every build uses instead of the arch's own (`Arch.pretraining`); None: the arch's. Tests set a short one.
RECIPE: PretrainRecipe | None = None


@dataclass(frozen=True)
class PretrainTarget:
    """Which checkpoint a job starts from, known at planning time without training (plain data, pickles)."""

    arch: str
    dataset: str
    data_root: Path
    data_fingerprint: str
    recipe: PretrainRecipe
    key: str
    path: Path  # the checkpoint's folder

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE


def pretraining_target(arch: str, dataset: str, cache_dir: Path | None = None) -> PretrainTarget | None:
    """The pretrained start of `arch` for runs on `dataset`, or None when the arch has hub weights of its own or
    the dataset provides no pretraining set (then the arch starts from random init)."""
    import torch

    from fairbench.datasets.cache import cache_root
    from fairbench.registry import get_dataset

    spec = get_arch(arch)
    if not spec.builds_default_weights or spec.pretraining is None:
        return None
    ds = get_dataset(dataset)()
    root = ds.pretraining_data(cache_dir)
    if root is None:
        return None
    identity = ds.identify(Path(root), ds.check_text_source(None))
    recipe = RECIPE or spec.pretraining
    key_data = [PRETRAIN_VERSION, arch, spec.model_name, dataset, identity.fingerprint, asdict(recipe),
                torch.__version__.split("+")[0]]
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "pretrained" / f"{arch}-{dataset}-{key}"
    return PretrainTarget(arch=arch, dataset=dataset, data_root=Path(root), data_fingerprint=identity.fingerprint,
                          recipe=recipe, key=key, path=path)


def ensure_pretrained(target: PretrainTarget, cache_dir: Path | None = None) -> dict[str, Any]:
    """The checkpoint's provenance, building it first if it is not cached yet (or is damaged)."""
    from fairbench.files import new_temp_dir, remove_tree
    from fairbench.runs.claims import build_once

    found: list[dict[str, Any]] = []
    warned: list[str] = []

    def ready() -> bool:
        provenance, damage = _check(target)
        if damage and damage not in warned:
            log.warning("%s: %s: building it again", target.weights, damage)
            warned.append(damage)
        found[:] = [provenance] if provenance is not None else []
        return provenance is not None

    def build() -> None:
        remove_tree(target.path)  # an interrupted older attempt (no provenance), or a damaged checkpoint
        tmp = new_temp_dir(target.path)
        try:
            _build(target, tmp, cache_dir)
            os.rename(tmp, target.path)
        finally:
            remove_tree(tmp)

    build_once(target.path.parent / f".{target.path.name}.build", ready, build,
               f"pretraining {target.arch} into {target.path}", log=log.info)
    if not found and not ready():  # pragma: no cover - the build just wrote it
        raise RuntimeError(f"pretrained checkpoint {target.path} vanished after it was built")
    return found[0]


def read_provenance(target: PretrainTarget) -> dict[str, Any] | None:
    """The provenance of a finished, intact build (with the checkpoint's path), or None if there is none."""
    return _check(target)[0]


def _check(target: PretrainTarget) -> tuple[dict[str, Any] | None, str]:
    """(provenance with the checkpoint's path, "") for an intact build; (None, why) for a damaged one; (None, "")
    when there is no finished build."""
    from fairbench.digests import file_sha256

    try:
        provenance = json.loads((target.path / PROVENANCE_FILE).read_text())
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError):
        return None, f"{PROVENANCE_FILE} is unreadable"
    if not isinstance(provenance, dict) or provenance.get("key") != target.key:
        return None, f"{PROVENANCE_FILE} belongs to another build"
    try:
        digest = file_sha256(target.weights)
    except OSError:
        return None, "the weights file is missing or unreadable"
    if digest != provenance.get("sha256"):
        return None, f"the weights do not match the SHA-256 in {PROVENANCE_FILE} (damaged)"
    return {**provenance, "path": str(target.weights)}, ""


def _build(target: PretrainTarget, out: Path, cache_dir: Path | None) -> None:
    import torch
    from safetensors.torch import save

    from fairbench.method import ContrastiveFineTune
    from fairbench.metrics import overall_auc
    from fairbench.models.backbones import create_backbone, input_spec
    from fairbench.phases import phase
    from fairbench.registry import get_dataset
    from fairbench.training.feeder import SplitData
    from fairbench.training.settings import TrainSettings
    from fairbench.training.trainer import seed_everything, train

    r = target.recipe
    ds = get_dataset(target.dataset)()
    inputs = input_spec(target.arch)
    data = ds.load(target.data_root, image_size=inputs.image_size, tokenize=inputs.tokenize,
                   tokenizer_key=inputs.tokenizer_key, text_source=ds.check_text_source(None), cache_dir=cache_dir)
    n = len(data.train)
    with phase(f"pretraining {target.arch} CLIP on the {target.dataset} pretraining set ({n} pairs, "
               f"{r.epochs} epochs, once) into {target.path}"):
        seed_everything(r.seed)
        backbone = create_backbone(target.arch, pretrained=None)
        split = lambda s: SplitData(images=s.images, tokens=s.tokens, labels=s.labels)  # noqa: E731
        settings = TrainSettings(**r.train_settings(), precision="fp32", select="val",
                                 grad_probe=False)  # one loss term: nothing to compare its gradient with
        # The CPU keeps these bytes reproducible: a GPU's nondeterministic kernels would not.
        outcome = train(ContrastiveFineTune(), backbone.model, settings, train_data=split(data.train),
                        val_data=split(data.val), test_data=split(data.val), normalize=backbone.normalizer(),
                        tokenize=backbone.tokenize, prompts=ds.prompts, label=ds.label, seed=r.seed,
                        device=torch.device("cpu"), auc=overall_auc)
    state = {k: v.detach().contiguous() for k, v in backbone.model.state_dict().items()}
    blob = save(state)  # bytes written with open(): the file gets the umask's mode (save_file makes it 0600)
    (out / WEIGHTS_FILE).write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    provenance = {
        "key": target.key,
        "arch": target.arch,
        "dataset": target.dataset,
        "data": str(target.data_root),
        "data_fingerprint": target.data_fingerprint,
        "n_train": n,
        "recipe": {**asdict(r), "betas": list(r.betas), "trainable": "all parameters", "objective": "CLIP "
                   "contrastive (symmetric InfoNCE)", "selection": "best zero-shot validation AUC"},
        "epoch": outcome.best_epoch,
        "val_auc": outcome.history[outcome.best_epoch]["val_auc"],
        "sha256": digest,
        "torch": torch.__version__,
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
