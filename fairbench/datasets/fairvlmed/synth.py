"""Synthetic FairVLMed: the real on-disk format, a learnable signal and a planted race bias.

Lets the whole harness run (and be tested) without the licensed data. What it must reproduce was
measured in a feasibility study before the generator was written (26 throwaway runs of a tiny CLIP):
  - signal: cup-to-disc ratio (CDR) ≈ N(0.72, 0.12) with glaucoma vs N(0.38, 0.12) without;
  - wording: ≈ 70 % of GPT-4-style summaries state the diagnosis with the literal words
    "non-glaucoma" / "glaucoma", or the zero-shot prompts "A photo of (non-)glaucoma" come out inverted;
  - bias: Black patients get a wider CDR spread (0.20) plus mild image degradation (lower cup contrast,
    blur, noise, darkening), and a higher prevalence (0.65 vs 0.48), so a plain CLIP shows race gaps;
  - groups: race ≈ 8/15/77 % Asian/Black/White, small Hispanic, Spanish and "Other" language groups,
    a few unknown (−1) ethnicity/language codes.
Images keep the real 664×512 (H×W) aspect at a smaller scale: `size` is the width, height is
round(size·664/512); the default 128 gives 166×128 px, twice what the CPU demo model sees (64 px).
They are stored as uint8 (0–255). Same arguments → same bytes: the npz zips carry fixed timestamps. The marker
file, written last, lists the SHA-256 of every file, so a cached copy that was damaged is generated again.
Version 2 enlarged the optic disc (radius 0.42–0.48 of half the width) and centred it more: with the
version-1 disc (0.21–0.27) the tiny CLIP stayed at the ln(batch) loss plateau for 4 epochs and scored
chance AUC; with the larger one it reaches validation AUC ≈ 0.9 in the same budget.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from fairbench.datasets.base import DatasetError

log = logging.getLogger("fairbench.data")

GENERATOR_VERSION = 2
MARKER = "fairbench_synthetic.json"
DEFAULTS: dict[str, int] = {"n_train": 1500, "n_val": 400, "n_test": 1000, "size": 128, "seed": 0}
_SPLIT_FOLDERS = (("Training", "training"), ("Validation", "validation"), ("Test", "test"))
_BATCH = 64  # images generated together; fixed, so the random streams do not depend on memory
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# Population (fractions of patients); codes as in FairVLMed.attributes.
RACE_P = (0.08, 0.15, 0.77)  # Asian, Black, White
PREVALENCE = {0: 0.48, 1: 0.65, 2: 0.48}
FEMALE_P = 0.56
ETHNICITY_P = (0.92, 0.05, 0.03)  # non-Hispanic, Hispanic, unknown
LANGUAGE_P = (0.945, 0.02, 0.015, 0.02)  # English, Spanish, Other, unknown (non-Hispanic patients)
HISPANIC_SPANISH_P = 0.45
MARITAL = ("married or partnered", "single", "divorced", "widowed", "legally separated")
MARITAL_P = (0.55, 0.25, 0.10, 0.07, 0.01, 0.02)  # last: unknown (−1)
CDR_MEAN = {0: 0.38, 1: 0.72}
CDR_SD, CDR_SD_BIASED = 0.12, 0.20
DIAGNOSIS_STATED_P = 0.70
BIASED_RACE = 1  # Black


def is_synthetic(root: str | os.PathLike[str]) -> bool:
    """Synthetic datasets carry a marker file; real FairVLMed does not."""
    return (Path(root) / MARKER).is_file()


# ---------------------------------------------------------------- population

def _population(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    race = rng.choice(3, size=n, p=RACE_P)
    gender = (rng.random(n) >= FEMALE_P).astype(np.int64)
    ethnicity = rng.choice([0, 1, -1], size=n, p=ETHNICITY_P)
    language = rng.choice([0, 1, 2, -1], size=n, p=LANGUAGE_P)
    spanish = (ethnicity == 1) & (rng.random(n) < HISPANIC_SPANISH_P)
    language = np.where(spanish, 1, language)
    marital = rng.choice([0, 1, 2, 3, 4, -1], size=n, p=MARITAL_P)
    prevalence = np.choose(race, [PREVALENCE[0], PREVALENCE[1], PREVALENCE[2]])
    glaucoma = (rng.random(n) < prevalence).astype(np.int64)
    age = np.round(np.clip(rng.normal(60.0, 14.0, n) + 5.0 * glaucoma, 18.0, 95.0), 2)
    sd = np.where(race == BIASED_RACE, CDR_SD_BIASED, CDR_SD)
    cdr = np.clip(np.where(glaucoma == 1, CDR_MEAN[1], CDR_MEAN[0]) + sd * rng.standard_normal(n), 0.08, 0.95)
    return {"race": race, "gender": gender, "ethnicity": ethnicity, "language": language,
            "maritalstatus": marital, "glaucoma": glaucoma, "age": age, "cdr": cdr}


# ---------------------------------------------------------------- images

def _fundus_batch(cdr: np.ndarray, degraded: np.ndarray, height: int, width: int,
                  rng: np.random.Generator) -> np.ndarray:
    """SLO-like grayscale fundus images (B, H, W) uint8: dark surround, vignetted retina with smooth
    texture, a bright optic disc whose paler cup has radius CDR × disc radius, dark vessels leaving the
    disc. `degraded` images get lower cup contrast, extra blur and noise, and are darker."""
    from scipy.ndimage import gaussian_filter

    b = len(cdr)
    half = width / 2.0  # geometry in units of half the width, so it scales with the image
    ys = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / half
    xs = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / half
    y, x = ys[None, :, None], xs[None, None, :]
    col = lambda v: np.asarray(v, dtype=np.float32)[:, None, None]  # noqa: E731
    edge = 1.2 / half  # soft edges ≈ 1 px
    sig = lambda t: 0.5 * (1.0 + np.tanh(t / edge))  # noqa: E731

    bright = col(rng.uniform(95, 125, b))
    eye = np.where(rng.random(b) < 0.5, -1.0, 1.0)
    cx, cy = col(eye * 0.12 + rng.normal(0, 0.03, b)), col(rng.normal(0, 0.03, b))
    rd = col(rng.uniform(0.42, 0.48, b))
    rc = col(cdr) * rd
    contrast = col(np.where(degraded, 0.6, 1.0) * rng.uniform(0.85, 1.15, b))
    dx, dy = x - cx, y - cy
    r = np.sqrt(dx * dx + dy * dy)

    texture = gaussian_filter(rng.standard_normal((b, height, width)).astype(np.float32),
                              sigma=(0, width / 16, width / 16))
    texture *= 8.0 / (texture.std(axis=(1, 2), keepdims=True) + 1e-6)
    retina = bright * (1.0 - 0.25 * (x * x + y * y)) + texture
    img = retina + 38.0 * sig(rd - r) + 60.0 * contrast * sig(rc - r)

    phi = np.arctan2(dy, dx)
    vessels = np.zeros_like(r)
    for _ in range(5):  # five vessels, each vectorised over the batch
        theta, bend = col(rng.uniform(-np.pi, np.pi, b)), col(rng.normal(0, 0.8, b))
        d = phi - theta - bend * r
        along = np.cos(d) > 0
        vessels += np.exp(-((r * np.sin(d)) ** 2) / (2 * 0.018**2)) * along * np.exp(-r / 1.5)
    img -= 30.0 * np.clip(vessels, 0, 1) * sig(r - 0.8 * rd)

    fov = sig(1.0 - np.sqrt((x / 0.98) ** 2 + (y / 1.25) ** 2))
    img = 6.0 + (img - 6.0) * fov
    scale = width / 64.0  # blur and noise in pixels of the 64-px view the demo model sees
    img = gaussian_filter(img, sigma=(0, 0.5 * scale, 0.5 * scale))
    if degraded.any():
        img[degraded] = 0.85 * gaussian_filter(img[degraded], sigma=(0, 0.8 * scale, 0.8 * scale))
    noise_sd = col(np.where(degraded, 9.0, 4.0))
    img += noise_sd * rng.standard_normal((b, height, width)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- notes

_FINDINGS = ("cataract", "dry eye syndrome", "myopia", "presbyopia", "diabetes without retinopathy",
             "hypertension", "posterior vitreous detachment", "blepharitis", "an epiretinal membrane",
             "mild macular degeneration", "narrow angles", "pseudophakia")
_GLAUCOMA_CLUES = ("elevated intraocular pressure", "visual field defects", "optic nerve cupping",
                   "thinning of the nerve fiber layer")
_NORMAL_CLUES = ("normal intraocular pressure", "full visual fields", "healthy optic nerves")
_DIAGNOSED = {
    1: ("The {age} y/o {sex} patient has glaucoma with {f1}, and {f2}.",
        "{Sex} patient, {age}, with glaucoma in both eyes; also {f1} and {f2}.",
        "The patient, a {age}-year-old {sex}, is treated for glaucoma and has {f1}; {f2} noted."),
    0: ("The {age} y/o {sex} patient is non-glaucoma with {f1}, and {f2}.",
        "{Sex} patient, {age}, non-glaucoma in both eyes; also {f1} and {f2}.",
        "The patient, a {age}-year-old {sex}, is non-glaucoma and has {f1}; {f2} noted."),
}
_UNSTATED = ("The {age} y/o {sex} patient has {f1} and {f2}; follow-up in {months} months.",
             "{Sex} patient, {age}, seen for {f1}; {f2} also noted.")
_REASONS = ("a routine eye exam", "blurry vision", "a glaucoma evaluation", "follow-up", "new floaters",
            "an optometry referral")


def _notes(pop: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[list[str], list[str], list[str]]:
    """GPT-4-style summaries, longer de-identified clinical notes and extra exam details."""
    n = len(pop["race"])
    stated = rng.random(n) < DIAGNOSIS_STATED_P
    in_note = rng.random(n) < 0.85
    clue = rng.random(n) < 0.5
    picks = rng.integers(0, 1 << 30, size=(n, 8))
    iop = np.where(pop["glaucoma"] == 1, rng.normal(21, 4, n), rng.normal(15, 3, n)).clip(8, 40)
    summaries, notes, extras = [], [], []
    for i in range(n):
        g, p = int(pop["glaucoma"][i]), picks[i]
        age, female = int(pop["age"][i]), pop["gender"][i] == 0
        sex = "female" if female else "male"
        f1 = _FINDINGS[p[0] % len(_FINDINGS)]
        f2 = _FINDINGS[(p[0] + 1 + p[1] % (len(_FINDINGS) - 1)) % len(_FINDINGS)]
        if clue[i]:
            f2 = (_GLAUCOMA_CLUES if g else _NORMAL_CLUES)[p[2] % (4 if g else 3)]
        fill = {"age": age, "sex": sex, "Sex": sex.capitalize(), "f1": f1, "f2": f2, "months": 3 + p[3] % 10}
        templates = _DIAGNOSED[g] if stated[i] else _UNSTATED
        summaries.append(templates[p[4] % len(templates)].format(**fill))
        assessment = ("primary open angle glaucoma, both eyes" if g else "non-glaucoma, optic nerves healthy") \
            if in_note[i] else "see plan"
        notes.append(
            f"{'ms.' if female else 'mr.'} PERSON is a {age} yo {'woman' if female else 'man'} presenting for "
            f"{_REASONS[p[5] % len(_REASONS)]}. history of {f1} and {f2}. iop {iop[i]:.0f} mmhg ou. "
            f"c/d {pop['cdr'][i]:.2f} ou. assessment: {assessment}. plan: return in {3 + p[6] % 10} months.")
        extras.append(f"visual acuity 20/{(20, 25, 30, 40, 60)[p[7] % 5]} ou; central corneal thickness "
                      f"{520 + p[7] % 60} um.")
    return summaries, notes, extras


# ---------------------------------------------------------------- writing

def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    path.write_bytes(buf.getvalue())


_WORDS = {
    "gender": {0: "female", 1: "male"},
    "race": {0: "asian", 1: "black", 2: "white"},
    "ethnicity": {0: "non-hispanic", 1: "hispanic", -1: "unknown"},
    "language": {0: "english", 1: "spanish", 2: "other", -1: "unknown"},
    "maritalstatus": {**dict(enumerate(MARITAL)), -1: "unknown"},
}


def make_synthetic(out: str | os.PathLike[str], n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                   n_test: int = DEFAULTS["n_test"], size: int = DEFAULTS["size"],
                   seed: int = DEFAULTS["seed"]) -> Path:
    """Write a synthetic FairVLMed to `out` (a new or empty folder) and return its path."""
    out = Path(out)
    counts = (n_train, n_val, n_test)
    if min(counts) < 1 or size < 16:
        raise DatasetError(f"synthetic dataset needs ≥ 1 sample per split and size ≥ 16 (got {counts}, {size})")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: folder exists and is not empty; choose a new folder or delete it")
    height, width = round(size * 664 / 512), size
    n = sum(counts)
    rng = np.random.default_rng([seed, 0])
    pop = _population(n, rng)
    summaries, notes, extras = _notes(pop, rng)
    names = [f"data_{i + 1:05d}.npz" for i in range(n)]
    use = np.repeat(np.arange(3), counts)
    for folder, _ in _SPLIT_FOLDERS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    degraded = pop["race"] == BIASED_RACE
    for start in range(0, n, _BATCH):
        sl = slice(start, min(start + _BATCH, n))
        images = _fundus_batch(pop["cdr"][sl], degraded[sl], height, width,
                               np.random.default_rng([seed, 1, start // _BATCH]))
        for j, i in enumerate(range(sl.start, sl.stop)):
            arrays = {"slo_fundus": images[j], **{k: np.array(pop[k][i], dtype=np.int64) for k in
                      ("glaucoma", "race", "gender", "ethnicity", "language", "maritalstatus")},
                      "age": np.array(pop["age"][i], dtype=np.float64),
                      "note": np.array(notes[i]), "note_extra": np.array(extras[i])}
            write_npz_deterministic(out / _SPLIT_FOLDERS[use[i]][0] / names[i], arrays)
    _write_csvs(out, names, pop, notes, summaries, use)
    params = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed}
    from fairbench.digests import file_sha256

    digests = {str(p.relative_to(out)): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    marker = {"generator": "fairbench.datasets.fairvlmed.synth", "version": GENERATOR_VERSION, "params": params,
              "image_shape": [height, width], "note": "Synthetic data: results on it are not FairVLMed results.",
              "sha256": digests}
    (out / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out


def _write_csvs(out: Path, names: list[str], pop: dict[str, np.ndarray], notes: list[str],
                summaries: list[str], use: np.ndarray) -> None:
    with open(out / "gpt-4_summarized_notes.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["filename", "note", "gpt4_summary"])
        w.writerows(zip(names, notes, summaries, strict=True))
    with open(out / "data_summary.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "note",
                    "gpt4_summary", "glaucoma", "use"])
        for i, name in enumerate(names):
            w.writerow([name, f"{pop['age'][i]:.2f}", *(_WORDS[k][int(pop[k][i])] for k in
                        ("gender", "race", "ethnicity", "language", "maritalstatus")),
                        notes[i], summaries[i], "yes" if pop["glaucoma"][i] else "no",
                        _SPLIT_FOLDERS[use[i]][1]])


def default_synthetic_dataset(cache_dir: Path | None = None) -> Path:
    """The default synthetic dataset, generated once under the cache root (see `cached_synthetic`)."""
    return cached_synthetic(DEFAULTS, cache_dir, "the default synthetic FairVLMed")


# The pretraining set of `tiny` (Dataset.pretraining_data): another seed of the generator, so no image or note
# repeats the default set's, standing in for the disjoint web data OpenAI CLIP was pretrained on. The test split
# is only a token one: pretraining trains on Training and reports its zero-shot AUC on Validation.
PRETRAINING: dict[str, int] = {"n_train": 1500, "n_val": 400, "n_test": 16, "size": 128, "seed": 1}


def pretraining_synthetic_dataset(cache_dir: Path | None = None) -> Path:
    """The synthetic pretraining set, generated once under the cache root next to the default set."""
    return cached_synthetic(PRETRAINING, cache_dir, "the synthetic FairVLMed pretraining set")


def cached_synthetic(params: dict[str, int], cache_dir: Path | None, what: str) -> Path:
    """A synthetic dataset with `params`, generated once under the cache root (`fairbench.datasets.synthetic`)."""
    from fairbench.datasets.synthetic import cached_generated_set

    n = params["n_train"] + params["n_val"] + params["n_test"]
    return cached_generated_set("fairvlmed-synth", GENERATOR_VERSION, params, cache_dir, what, f"{n} samples",
                                lambda out: make_synthetic(out, **params), MARKER)


def _damage(path: Path) -> str:
    """Why the synthetic dataset at `path` cannot be used ("" if it can)."""
    from fairbench.datasets.synthetic import synthetic_damage

    return synthetic_damage(path, MARKER)
