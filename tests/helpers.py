"""Shared test helpers (no test module imports another): the small synthetic FairVLMed, fake result folders
with reference metrics, a method plugin's source, Fair-MoE's expected layers and loss terms, and the toy trainer
run that resume and protocol tests script."""

from __future__ import annotations

import textwrap
import zlib
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------- the small synthetic FairVLMed

SMALL = {"n_train": 96, "n_val": 48, "n_test": 64, "size": 64, "seed": 0}


def small_synthetic(root: Path) -> Path:
    """The small synthetic FairVLMed under `root` (built once; tests share it through conftest's `dataset`)."""
    from fairbench.datasets.fairvlmed.synth import make_synthetic

    path = root / "synth-small"
    if not path.exists():
        make_synthetic(path, **SMALL)
    return path


def copy_dataset(source: Path, target: Path) -> Path:
    """A private copy of a dataset folder, for a test that damages it."""
    import shutil

    shutil.copytree(source, target)
    return target


def rewrite_summaries(root: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Replace the dataset's summary CSV with `header` and `rows`."""
    import csv

    path = root / "gpt-4_summarized_notes.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


def summary_rows(root: Path) -> list[list[str]]:
    """The rows (file name, note, summary) of the synthetic dataset's summary CSV, without its header."""
    import csv

    with open(root / "gpt-4_summarized_notes.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def tiny_tokenize(texts: list[str]):
    """A stand-in tokenizer (first 8 characters as codes), so data tests need no CLIP tokenizer."""
    import torch

    return torch.tensor([[ord(c) % 256 for c in (t + " " * 8)[:8]] for t in texts], dtype=torch.long)


def load_small(root: Path, cache: Path, text_source: str = "gpt4"):
    from fairbench.datasets.fairvlmed.load import load_fairvlmed

    return load_fairvlmed(root, image_size=16, tokenize=tiny_tokenize, tokenizer_key="tiny-test",
                          text_source=text_source, cache_dir=cache)


def unwritable(path: Path):
    """A context manager under which the folder `path` refuses new files, as a read-only or immutable folder does.

    As root, permissions do not bind, so it sets the immutable attribute (`chattr +i`, which binds root too); as
    another user it removes write permission. Skips the test where neither is possible."""
    import contextlib
    import os
    import shutil
    import subprocess

    import pytest

    @contextlib.contextmanager
    def block():
        if os.geteuid() != 0:
            mode = path.stat().st_mode
            path.chmod(0o555)
            try:
                yield "chmod a-w"
            finally:
                path.chmod(mode)
            return
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root without a working `chattr +i`: no way to make a folder refuse root")
        try:
            yield "chattr +i"
        finally:
            subprocess.run([chattr, "-i", str(path)], capture_output=True)

    return block()


def slurm_unavailable() -> str | None:
    """Why the cluster tests cannot run here, or None."""
    import importlib.util
    import shutil
    import subprocess

    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed (pip install 'fairbench-medvlm[slurm]')"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM on this machine (sinfo/sbatch not found); sudo scripts/slurm_local.sh starts one"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
        accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer ({exc}); sudo scripts/slurm_local.sh starts it"
    states = nodes.stdout.split()
    if nodes.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return (f"the SLURM cluster is down (sinfo: {(nodes.stdout + nodes.stderr).strip() or 'no nodes'}); "
                "sudo scripts/slurm_local.sh starts it")
    if accounting.returncode != 0:
        return (f"sacct fails ({accounting.stderr.strip()}): without accounting submitit never notices a "
                "cancelled job; sudo scripts/slurm_local.sh sets up slurmdbd")
    return None

# ---------------------------------------------------------------- fake results folders (report and table tests)
# Metric suites are computed here independently (sklearn AUC, per-group rates in plain numpy, checked against
# fairlearn in tests/test_report_fixtures.py), not with fairbench.metrics, so the report code is checked against a
# reference it does not share. fairlearn itself is too slow to call for every fixture run.

GROUP_NAMES = {
    "race": {0: "Asian", 1: "Black", 2: "White"},
    "gender": {0: "Female", 1: "Male"},
    "ethnicity": {0: "Non-Hispanic", 1: "Hispanic"},
    "language": {0: "English", 1: "Spanish", 2: "Other"},
}
N_TEST = 240


def _gap(rates: list[float | None]) -> float:
    values = [r for r in rates if r is not None]
    return float(max(values) - min(values))


def reference_suite(labels: np.ndarray, scores: np.ndarray, attrs: dict[str, np.ndarray]) -> dict:
    """The metric-suite dict of fairbench.runs.results' schema, from sklearn and fairlearn."""
    from sklearn.metrics import roc_auc_score

    pred = (scores >= 0.5).astype(int)
    auc = float(roc_auc_score(labels, scores))
    suite = {"n": int(len(labels)), "threshold": 0.5, "auc": auc, "accuracy": float((pred == labels).mean()),
             "attributes": {}}
    for attr, codes in attrs.items():
        groups = {}
        for code, name in GROUP_NAMES[attr].items():
            m = codes == code
            y, p, s = labels[m], pred[m], scores[m]
            both = len(np.unique(y)) == 2
            groups[name] = {
                "code": code, "n": int(m.sum()), "positives": int(y.sum()),
                "auc": float(roc_auc_score(y, s)) if both else None,
                "accuracy": float((p == y).mean()), "tpr": float(p[y == 1].mean()) if y.any() else None,
                "fpr": float(p[y == 0].mean()) if (y == 0).any() else None, "selection_rate": float(p.mean()),
            }
        gaucs = np.array([g["auc"] for g in groups.values() if g["auc"] is not None])
        gaccs = np.array([g["accuracy"] for g in groups.values()])
        acc = suite["accuracy"]
        suite["attributes"][attr] = {
            "auc": auc, "accuracy": acc,
            "es_auc": auc / (1 + np.abs(auc - gaucs).sum()), "es_acc": acc / (1 + np.abs(acc - gaccs).sum()),
            "dpd": _gap([g["selection_rate"] for g in groups.values()]),
            "eod": max(_gap([g["tpr"] for g in groups.values()]), _gap([g["fpr"] for g in groups.values()])),
            "group_auc_std": float(gaucs.std() / auc), "group_auc_range": float(np.ptp(gaucs) / auc),
            "groups": groups,
        }
    return suite


def population(seed: int = 123, n: int = N_TEST) -> dict[str, np.ndarray]:
    """Fixed test split (same for every run, as in a real benchmark)."""
    rng = np.random.default_rng(seed)
    return {
        "sample": np.arange(1000, 1000 + n), "label": rng.integers(0, 2, n),
        "race": rng.integers(0, 3, n), "gender": rng.integers(0, 2, n),
        "ethnicity": rng.integers(0, 2, n), "language": rng.integers(0, 3, n),
    }


def make_scores(pop: dict[str, np.ndarray], strength: float, seed: int) -> np.ndarray:
    """Scores with a known signal; Black patients (race 1) get a noisier score (a fairness gap)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, len(pop["label"])) * np.where(pop["race"] == 1, 2.0, 1.0)
    return 1 / (1 + np.exp(-(strength * (2 * pop["label"] - 1) + noise)))


def write_run(root: Path, method: str, arch: str, attribute: str | None, seed: int, *, strength: float = 1.0,
              dataset: str = "fairvlmed", synthetic: bool = False, selection: str = "val",
              config: dict | None = None, predictions: bool = True, pop: dict | None = None,
              score_seed: int | None = None, mode: dict | None = None) -> dict:
    """Write one finished run (predictions CSVs, history, result.json last); return the record. `mode` adds the
    usage-mode fields (e.g. {"mode": "zero-shot", "single_run": True, "trainable_parameters": 0})."""
    from fairbench.files import write_json_atomic
    from fairbench.runs.results import RESULT_SCHEMA, config_hash, run_dir

    pop = pop if pop is not None else population()
    config = config or {"method": method, "arch": arch, "epochs": 10, "lr": 1e-5, "method_settings": {}}
    cfg_hash = config_hash(config)
    folder = run_dir(root, dataset, method, arch, attribute, cfg_hash, seed)
    folder.mkdir(parents=True, exist_ok=True)
    if score_seed is None:
        score_seed = zlib.crc32(f"{method}/{arch}/{attribute}/{seed}/{cfg_hash}".encode())
    scores = make_scores(pop, strength, seed=score_seed)
    if predictions:
        lines = ["sample,label,score,race,gender,ethnicity,language"]
        lines += [f"{s},{y},{float(p)!r},{r},{g},{e},{la}" for s, y, p, r, g, e, la in zip(
            pop["sample"], pop["label"], scores, pop["race"], pop["gender"], pop["ethnicity"], pop["language"],
            strict=True)]
        (folder / "predictions_test.csv").write_text("\n".join(lines) + "\n")
        (folder / "predictions_val.csv").write_text("\n".join(lines[:50]) + "\n")
    (folder / "history.json").write_text("[]\n")
    attrs = {a: pop[a] for a in GROUP_NAMES}
    suite = reference_suite(pop["label"], scores, attrs)
    record = {
        "schema": RESULT_SCHEMA, "run_id": str(folder.relative_to(root)), "method": method, "arch": arch,
        "attribute": attribute, "seed": seed,
        "dataset": {"tag": dataset, "synthetic": synthetic, "path": "/data/x", "fingerprint": "abc",
                    "n": {"train": 700, "val": 100, "test": len(pop["label"])}, "n_dropped": {"val": 0, "test": 0}},
        "config": config, "config_hash": cfg_hash,
        "selection": {"rule": selection, "metric": "auc", "epoch": 3,
                      "label": "best validation AUC" if selection == "val" else "best TEST AUC"},
        "metrics": {"val": suite, "test": suite}, "epochs_trained": 10,
        "versions": {"fairbench": "0.1.0", "torch": "2.x", "python": "3.11"}, "device": "cpu",
        "timings": {"train_s": 1.0, "eval_s": 0.1, "total_s": 1.1}, "finished_at": "2025-01-01T00:00:00Z",
        "files": {"predictions_test": "predictions_test.csv", "predictions_val": "predictions_val.csv"},
        **(mode or {}),
    }
    write_json_atomic(folder / "result.json", record)
    return record


def build_results(root: Path) -> Path:
    """A small benchmark: clip (no attribute), fairclip on race/gender (two lambdas), fairmoe missing seed 1,
    plus a synthetic dataset and a test-selected run that must never share a table with the rest."""
    for seed in range(3):
        write_run(root, "clip", "b16", None, seed, strength=0.8)
        for attr in ("race", "gender"):
            write_run(root, "fairclip", "b16", attr, seed, strength=1.0,
                      config={"method": "fairclip", "epochs": 10, "method_settings": {"lambda": 1e-5}})
            write_run(root, "fairclip", "b16", attr, seed, strength=1.1,
                      config={"method": "fairclip", "epochs": 10, "method_settings": {"lambda": 1e-4}})
    for seed in (0, 2):
        write_run(root, "fairmoe", "b16", "race", seed, strength=1.5)
    for seed in range(2):
        write_run(root, "clip", "tiny", None, seed, strength=2.0, dataset="synthetic", synthetic=True)
        write_run(root, "fairmoe", "tiny", "race", seed, strength=2.5, dataset="synthetic", synthetic=True)
    write_run(root, "clip", "b16", None, 0, strength=0.8, selection="test",
              config={"method": "clip", "arch": "b16", "epochs": 10, "selection": "test"})
    return root


# ---------------------------------------------------------------- a method plugin (registry and CLI tests)

PLUGIN_SOURCE = textwrap.dedent('''
    from dataclasses import dataclass
    from fairbench import Method, register_method, encode_batch
    from fairbench.training.losses import clip_contrastive_loss

    @register_method("{name}", description="test plugin: CLIP with a scaled loss")
    class Scaled(Method):
        @dataclass
        class Settings:
            weight: float = 0.5

        def loss_terms(self, model, batch, group_batches):
            image, text = encode_batch(model, batch)
            return {{"scaled": self.settings.weight * clip_contrastive_loss(image, text, model.logit_scale.exp())}}
''')


# ---------------------------------------------------------------- Fair-MoE's variants

ALL_LAYERS = {"image_embedding", "text_embedding", "image_feature", "text_feature"}
ALL_FOL = {"fol_ei", "fol_et", "fol_fi", "fol_ft"}
# name → (MoE layers its model has, FOL terms its loss has)
EXPECTED_RUN = {
    "fairmoe": (ALL_LAYERS, ALL_FOL), "fairclip-fom": (ALL_LAYERS, set()), "fairmoe-no-fol": (ALL_LAYERS, set()),
    "fairmoe-no-fei": (ALL_LAYERS, ALL_FOL - {"fol_ei"}), "fairmoe-no-fet": (ALL_LAYERS, ALL_FOL - {"fol_et"}),
    "fairmoe-no-ffi": (ALL_LAYERS, ALL_FOL - {"fol_fi"}), "fairmoe-no-fft": (ALL_LAYERS, ALL_FOL - {"fol_ft"}),
    "fairmoe-no-em": ({"image_feature", "text_feature"}, {"fol_fi", "fol_ft"}),
    "fairmoe-no-fm": ({"image_embedding", "text_embedding"}, {"fol_ei", "fol_et"}),
    "fairmoe-no-text-moe": ({"image_embedding", "image_feature"}, {"fol_ei", "fol_fi"}),
    "fairmoe-no-image-moe": ({"text_embedding", "text_feature"}, {"fol_et", "fol_ft"}),
}


# ---------------------------------------------------------------- the trainer alone, on a toy CLIP
# A toy CLIP (dropout: torch's generator) and a method that also draws from Python's and NumPy's generators,
# with a scripted selection key so that the best epoch is an early one: every piece of a resumed run's state
# matters (tests/test_resume.py), and the selection rules can be scripted (tests/test_protocols.py).

class ToyCLIP(torch.nn.Module):
    """A CLIP of one linear layer per tower, with dropout (so a resume needs torch's generator state)."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Linear(3 * 4 * 4, 8)
        self.text = torch.nn.Embedding(16, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1.0))

    def encode_image(self, x):
        return self.drop(self.image(x.flatten(1)))

    def encode_text(self, tokens):
        return self.text(tokens).mean(1)


def toy_method():
    """A group-batch method whose loss also draws from Python's and NumPy's generators."""
    import random

    from fairbench.method import Method, encode_batch
    from fairbench.training.losses import clip_contrastive_loss

    class Noisy(Method):
        name = "noisy"
        group_batches = True

        def group_batch_size(self):
            return 3

        def loss_terms(self, model, batch, group_batches):
            image, text = encode_batch(model, batch)
            jitter = random.random() + float(np.random.rand())  # Python's and NumPy's generators
            groups = sum(encode_batch(model, gb)[0].mean() for gb in group_batches.values())
            return {"contrastive": clip_contrastive_loss(image, text, model.logit_scale.exp()) * (1 + 0.01 * jitter),
                    "groups": 0.01 * groups}

    return Noisy(None, "g", 2)


def toy_split(n: int, seed: int):
    """n random 4×4 images with 5-token texts, labels and two groups, alternating."""
    from fairbench.training.trainer import SplitData

    g = torch.Generator().manual_seed(seed)
    return SplitData(images=torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g),
                     tokens=torch.randint(0, 16, (n, 5), generator=g), labels=torch.arange(n) % 2,
                     groups=torch.arange(n) % 2)


def toy_train(select: str, epochs: int, keys: list[float], resume=None, on_epoch_state=None, stop_after=None,
              **overrides):
    """`keys` scripts the selection metric per epoch (the val AUC, or the test AUC under test selection)."""
    from fairbench.training.trainer import TrainSettings, seed_everything, train

    class Stop(Exception):
        pass

    calls = iter(range(10 ** 6))
    per_epoch = 2 if select == "test" else 1
    first = resume.epochs_done if resume else 0

    def auc(labels, scores) -> float:  # val (and test) once per epoch; the final test scoring is not timed here
        i = next(calls) + first * per_epoch
        return keys[i // per_epoch] if i % per_epoch == per_epoch - 1 else 0.5

    def saved(state):
        on_epoch_state(state)
        if stop_after is not None and state.epochs_done == stop_after:
            raise Stop

    seed_everything(7)
    model = ToyCLIP()
    settings = TrainSettings(epochs=epochs, batch_size=6, lr=1e-2, betas=(0.9, 0.99), warmup_steps=5,
                             select=select, checkpoint=True, max_steps_per_epoch=3, **overrides)
    try:
        return train(toy_method(), model, settings, train_data=toy_split(20, 1), val_data=toy_split(10, 2),
                     test_data=toy_split(12, 3), normalize=lambda x: x.float() / 255,
                     tokenize=lambda prompts: torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]), prompts=("a", "b"),
                     seed=3, device=torch.device("cpu"), auc=auc, resume=resume,
                     on_epoch_state=saved if on_epoch_state else None)
    except Stop:
        return None


# ---------------------------------------------------------------- a dataset from a CSV and a PNG folder

TABLE_DATASET_FILE = """\
name = "lesions-csv"
description = "Skin lesions from a CSV and a PNG folder (test data)"
data = "."

[card]
source = "generated by tests/helpers.py"
licence = "CC0 1.0"

[table]
csv = "meta.csv"
id = "image_id"
image = "{image_id}.png"
image_dirs = ["images"]
patient = "patient"

[split]
column = "fold"
values = { train = ["train"], val = ["valid"], test = ["test"] }

[label]
column = "finding"
positive = ["malignant"]
negative = ["benign"]
name = "malignant"
classes = ["benign", "malignant"]
prompts = ["A photo of a benign lesion", "A photo of a malignant lesion"]

[attributes.site]
column = "site"
groups = { arm = ["arm"], leg = ["leg", "LEG"] }
unknown = ["n/a"]

[attributes.age]
column = "age_years"
bins = [50]
closed = "right"
groups = ["up to 50", "over 50"]

[text]
template = "A photo of a {finding} lesion on the {site}"

[images]
channels = 1
"""


def write_table_dataset(root: Path, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A metadata CSV and a folder of grayscale PNGs (malignant lesions are brighter, so a model can learn), plus its
    dataset file `lesions.toml`; returns the dataset file. Two images per patient, never across splits."""
    import csv

    from PIL import Image

    sizes = sizes or {"train": 48, "valid": 24, "test": 32}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, k = [], 0
    for fold, n in sizes.items():
        for _ in range(n):
            malignant = rng.random() < 0.4
            image_id = f"IMG_{k:04d}"
            bright = 170.0 if malignant else 80.0
            pixels = np.clip(bright + rng.normal(0, 25, (20, 24)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / "images" / f"{image_id}.png")
            rows.append([image_id, f"P{k // 2:04d}-{fold}", fold, "malignant" if malignant else "benign",
                         ["arm", "leg"][int(rng.integers(0, 2))], f"{rng.integers(20, 90)}"])
            k += 1
    with open(root / "meta.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "patient", "fold", "finding", "site", "age_years"])
        w.writerows(rows)
    spec = root / "lesions.toml"
    spec.write_text(TABLE_DATASET_FILE)
    return spec


# ---------------------------------------------------------------- a tiny BiomedCLIP-layout local-dir: model

BIOMED_WORDS = ["a", "scanning", "laser", "ophthalmoscope", "fundus", "image", "of", "glaucoma", "normal", "no",
                "the", "patient", "has", "with", "eye", "optic", "nerve", "cup", "disc", "ratio"]


def biomedclip_folder(root: Path, context_length: int = 32) -> Path:
    """A folder with BiomedCLIP's file structure (open_clip_config.json with a timm image tower and a BERT-style
    Hugging Face text tower, its tokenizer files and open_clip weights), tiny and randomly initialised, written
    offline: the BERT config.json sits in the folder and `hf_model_name` points at it (research-21 §3). The
    context length is shorter than BiomedCLIP's 256 only to keep tests fast; the layout is the same."""
    import json

    import open_clip
    import torch
    from transformers import BertConfig

    folder = root / "biomedclip-tiny"
    if (folder / "open_clip_pytorch_model.bin").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BIOMED_WORDS, ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64, pad_token_id=0, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": context_length}))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
         "unk_token": "[UNK]"}))
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 16,
                      "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                                     "timm_proj": "linear", "image_size": 64},
                      "text_cfg": {"hf_model_name": str(folder.resolve()), "hf_tokenizer_name": str(folder.resolve()),
                                   "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                   "context_length": context_length}},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}", pretrained_text=False)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
