"""Harvard-FairVLMed (Luo et al., CVPR 2024): glaucoma from SLO fundus images and clinical notes.

Registered like any plugin's dataset, and the default one. Without --data or $FAIRBENCH_DATA it falls
back to a synthetic FairVLMed in the real on-disk format, generated once into the cache (see `synth`).
Modules: `format` (the on-disk format), `load` (tensors via the core preprocessing cache), `check`
(`fairbench data check`), `synth` (the synthetic stand-in). This module stays stdlib-only: the CLI
imports it to list datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairbench.datasets.base import CheckReport, DataIdentity, Dataset, LoadedDataset
from fairbench.datasets.card import DataCard, HubSource
from fairbench.datasets.fairvlmed import meta
from fairbench.registry import register_dataset


@register_dataset(meta.NAME, default=True,
                  description="Harvard-FairVLMed: glaucoma from SLO fundus images + clinical notes "
                  "(synthetic stand-in without --data)")
class FairVLMed(Dataset):
    """Harvard-FairVLMed: 7000/1000/2000 patients, four protected attributes."""

    tag = meta.TAG
    synthetic_tag = meta.SYNTHETIC_TAG
    label = "glaucoma"
    classes = ("non-glaucoma", "glaucoma")
    attributes = meta.ATTRIBUTES
    # FairCLIP's zero-shot prompts (`compute_vl_prob`): p(glaucoma) = softmax over the two cosine similarities.
    prompts = ("A photo of non-glaucoma", "A photo of glaucoma")
    text_sources = ("gpt4", "note", "note+demographics")
    env_var = "FAIRBENCH_DATA"
    # Facts from the FairCLIP README (Harvard-Ophthalmology-AI-Lab/FairCLIP @91b05b6, README.md lines 25-38 and
    # 111-118) and FairMedFM (FairMedFM/FairMedFM @ac062df: pre-processing/classification/FairVLMed-10k.ipynb,
    # datasets/FairVLMed.py). The Hugging Face repository's gating and file layout are not verified: both are
    # options of `fairbench data download` (--repo, --include, --root-file).
    card = DataCard(
        source="Harvard-FairVLMed (Harvard Ophthalmology AI Lab): https://huggingface.co/datasets/"
               "harvardairobotics/FairVLMed (earlier https://ophai.hms.harvard.edu/datasets/harvard-fairvlmed10k)",
        licence="CC BY-NC-ND 4.0: non-commercial research only, never for clinical decisions or patient care",
        citation="Luo Y., Shi M., Khan M.O., Afzal M.M., Huang H., Yuan S., Tian Y., Song L., Kouhana A., Elze T., "
                 "et al. FairCLIP: Harnessing Fairness in Vision-Language Learning. CVPR 2024, pp. 12289-12301",
        access="`fairbench data download fairvlmed --to DIR` (Hugging Face; if the repository asks, log in, accept "
               "its conditions and set HF_TOKEN); the FairCLIP README names harvardophai@gmail.com for questions. Pass "
               "the folder holding data_summary.csv, Training/, Validation/ and Test/ with --data or $FAIRBENCH_DATA",
        label_mapping="glaucoma (1) = the npz's `glaucoma` 1 (data_summary.csv glaucoma yes), 0 = no",
        pitfalls=(
            "FairMedFM binarises race as White / non-White (FairVLMed-10k.ipynb; datasets/FairVLMed.py), so its race "
            "numbers are not comparable with FairCLIP's three groups (Asian, Black, White) used here",
            "FairMedFM binarises language as English / non-English, with unknown language counted as non-English",
            "FairMedFM draws its own sex-balanced test set (873 + 873) instead of FairCLIP's official "
            "7000/1000/2000 split used here; its age groups are < 60 / >= 60",
            "Samples with an unknown (-1) attribute train but are dropped from validation and test",
        ),
        download=HubSource("harvardairobotics/FairVLMed", root_file="data_summary.csv"),
        extra={"split": "official: Training 7000 / Validation 1000 / Test 2000 patients"},
    )

    def default_path(self, cache_dir: Path | None = None) -> Path:
        from fairbench.datasets.fairvlmed.synth import default_synthetic_dataset

        return default_synthetic_dataset(cache_dir)

    def pretraining_data(self, cache_dir: Path | None = None) -> Path:
        from fairbench.datasets.fairvlmed.synth import pretraining_synthetic_dataset

        return pretraining_synthetic_dataset(cache_dir)

    @classmethod
    def check_text_source(cls, text_source: str | None) -> str:
        """A text source, or `gpt4:COLUMN`: the summary from the CSV column headed COLUMN (a summary CSV without
        a published header is read only that way; see format.SUMMARY_LAYOUTS)."""
        from fairbench.datasets.fairvlmed.format import check_text_source

        return check_text_source(text_source or cls.text_sources[0])

    def identify(self, root: Path, text_source: str) -> DataIdentity:
        from fairbench.datasets.fairvlmed.load import identify_fairvlmed

        return identify_fairvlmed(root, text_source)

    def load(self, root: Path, *, image_size: int, tokenize: Any, tokenizer_key: str, text_source: str,
             cache_dir: Path | None = None) -> LoadedDataset:
        from fairbench.datasets.fairvlmed.load import load_fairvlmed

        return load_fairvlmed(root, image_size=image_size, tokenize=tokenize, tokenizer_key=tokenizer_key,
                              text_source=text_source, cache_dir=cache_dir)

    def check(self, root: Path) -> CheckReport:
        from fairbench.datasets.fairvlmed.check import check_dataset

        return check_dataset(root)

    def synthesize(self, out: Path, **options: Any) -> Path:
        from fairbench.datasets.fairvlmed.synth import make_synthetic

        return make_synthetic(out, **options)
