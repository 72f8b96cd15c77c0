"""A synthetic HAM10000 in the real on-disk format: `HAM10000_metadata.csv` (the 8 columns of the current Dataverse
version, ages written as "80.0", some ages empty and some sexes "unknown", as in the real table) and RGB JPEGs
`{image_id}.jpg` in the two image folders, 4:3 like the real 600x450 images.

Lesions (lesion_id) have one to three images each. Malignant lesions (mel, akiec) are on average darker, larger and
more irregular (the classes overlap), so a small model has something to learn but not everything; lesions of the
older group (over 60) are drawn with less contrast, so the age groups differ in difficulty and the fairness
metrics have a gap to measure. Same arguments, same bytes
(on one Pillow/libjpeg build). Results on it are not HAM10000 results.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from fairbench.datasets.errors import DatasetError

GENERATOR_VERSION = 2
MARKER = "fairbench-synthetic.json"  # fairbench.datasets.table.SYNTHETIC_MARKER: the data gets the synthetic tag
DEFAULTS: dict[str, int] = {"n_images": 1200, "size": 96, "seed": 0}
PRETRAINING: dict[str, int] = {"n_images": 1000, "size": 96, "seed": 1}
# dx frequencies of the real table (10015 images; Dataverse description, counts in the HAM10000 paper's Table)
DX = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
MALIGNANT = ("mel", "akiec")
SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot", "neck", "scalp")
SOURCES = ("vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias")
FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]


def _lesion_image(rng: np.random.Generator, malignant: bool, old: bool, height: int, width: int) -> np.ndarray:
    """One RGB dermatoscopy-like image (H, W, 3) uint8: skin tone, a brown lesion with a noisy border."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2 + rng.normal(0, height / 12), width / 2 + rng.normal(0, width / 12)
    radius = (0.24 if malignant else 0.20) * height * rng.uniform(0.7, 1.3)
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1 + (0.12 if malignant else 0.06) * np.sin(rng.integers(3, 7) * angle + rng.uniform(0, 6.3))
    inside = np.clip((radius * wobble - np.hypot(y - cy, x - cx)) / 2.0, 0, 1)[..., None]
    skin = np.array([205, 160, 140], np.float32) * rng.uniform(0.85, 1.05)
    depth = (0.42 if malignant else 0.52) + rng.uniform(-0.12, 0.12)
    if old:  # less contrast between lesion and skin: the older group is harder
        depth = 1.0 - 0.6 * (1.0 - depth)
    lesion = skin * depth + rng.normal(0, 6, 3)
    img = skin * (1 - inside) + lesion * inside + rng.normal(0, 7, (height, width, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_synthetic(out: str | os.PathLike[str], n_images: int = DEFAULTS["n_images"], size: int = DEFAULTS["size"],
                   seed: int = DEFAULTS["seed"]) -> Path:
    """Write a synthetic HAM10000 to `out` (a new or empty folder) and return its path."""
    from PIL import Image

    from fairbench.digests import file_sha256

    out = Path(out)
    if n_images < 30 or size < 16:
        raise DatasetError(f"synthetic HAM10000 needs >= 30 images and size >= 16 (got {n_images}, {size})")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: folder exists and is not empty; choose a new folder or delete it")
    for folder in FOLDERS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 23])
    height, width = round(size * 450 / 600), size
    dx_names = list(DX)
    p = np.array(list(DX.values()), dtype=float)
    rows, image, lesion = [], 0, 0
    while image < n_images:
        per_lesion = min(int(rng.choice([1, 1, 2, 3])), n_images - image)
        dx = dx_names[rng.choice(len(dx_names), p=p / p.sum())]
        sex = "unknown" if rng.random() < 0.01 else ("male" if rng.random() < 0.54 else "female")
        age = "" if rng.random() < 0.01 else f"{5 * int(rng.integers(0, 18)):.1f}"
        site, source = SITES[rng.integers(len(SITES))], SOURCES[rng.integers(len(SOURCES))]
        dx_type = "histo" if dx in MALIGNANT else ("follow_up" if rng.random() < 0.5 else "consensus")
        old = age != "" and float(age) > 60
        for _ in range(per_lesion):
            image_id = f"ISIC_{24306 + image:07d}"
            pixels = _lesion_image(rng, dx in MALIGNANT, old, height, width)
            folder = FOLDERS[image % 2]
            Image.fromarray(pixels, mode="RGB").save(out / folder / f"{image_id}.jpg", quality=90)
            rows.append([f"HAM_{lesion:07d}", image_id, dx, dx_type, age, sex, site, source])
            image += 1
        lesion += 1
    with open(out / "HAM10000_metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    digests = {str(q.relative_to(out)): file_sha256(q) for q in sorted(out.rglob("*")) if q.is_file()}
    marker = {"generator": __name__, "version": GENERATOR_VERSION,
              "params": {"n_images": n_images, "size": size, "seed": seed},
              "note": "Synthetic data: results on it are not HAM10000 results.", "sha256": digests}
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out


def cached_synthetic(params: dict[str, int], cache_dir: Path | None, what: str) -> Path:
    """A synthetic set with `params`, generated once under the cache root (`fairbench.datasets.synthetic`)."""
    from fairbench.datasets.synthetic import cached_generated_set

    return cached_generated_set("ham10000-synth", GENERATOR_VERSION, params, cache_dir, what,
                                f"{params['n_images']} images", lambda out: make_synthetic(out, **params), MARKER)
