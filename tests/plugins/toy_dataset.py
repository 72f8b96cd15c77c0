"""A second dataset, known to fairbench only through --plugin: toy skin lesions, generated on first use.

Label 1 ("malignant") images are brighter, and the notes name the class, so even the random-init `tiny`
model has something to learn. Two protected attributes with their own group names; other prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairbench import register_dataset
from fairbench.datasets import Dataset, DatasetError, tensors_from_arrays

SIZES = {"train": 64, "val": 32, "test": 48}


@register_dataset("toy", description="Toy skin lesions: malignant vs benign, by body site and age band")
class ToyLesions(Dataset):
    tag = "toy"
    label = "malignant"
    classes = ("benign", "malignant")
    attributes = {"site": {0: "arm", 1: "leg", 2: "torso"}, "age_band": {0: "under-50", 1: "50-plus"}}
    prompts = ("A photo of a benign lesion", "A photo of a malignant lesion")

    def default_path(self, cache_dir: Path | None = None) -> Path:
        from fairbench.datasets.cache import cache_root

        path = cache_root(cache_dir) / "toy-lesions"
        if not (path / "test.npz").is_file():
            self.synthesize(path)
        return path

    def synthesize(self, out: Path, seed: int = 0, size: int = 24, **counts: int) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        for split, default_n in SIZES.items():
            n = counts.get(f"n_{split}", default_n)
            labels = rng.integers(0, 2, n)
            site, age = rng.integers(0, 3, n), rng.integers(0, 2, n)
            bright = np.where(labels == 1, 170.0, 80.0)[:, None, None]
            images = np.clip(bright + rng.normal(0, 20, (n, size, size)), 0, 255).astype(np.uint8)
            texts = np.array([f"a {'malignant' if y else 'benign'} lesion on the {self.attributes['site'][s]}"
                              for y, s in zip(labels, site, strict=True)])
            np.savez(out / f"{split}.npz", images=images, texts=texts, labels=labels, site=site, age_band=age)
        return out

    def load(self, root, *, image_size, tokenize, tokenizer_key, text_source, cache_dir=None):
        splits = {}
        for split in SIZES:
            path = Path(root) / f"{split}.npz"
            if not path.is_file():
                raise DatasetError(f"{path}: missing; run `fairbench data synth --dataset toy {root}`")
            with np.load(path) as f:
                splits[split] = tensors_from_arrays(f["images"], f["texts"].tolist(), f["labels"],
                                                    {a: f[a] for a in self.attributes},
                                                    tokenize=tokenize, image_size=image_size)
        return self.loaded(root, text_source, **splits)
