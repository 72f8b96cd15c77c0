"""HAM10000 (Tschandl et al., Sci. Data 2018): the shipped dataset file `ham10000.toml` (format, label mapping,
attributes, split, card) plus a synthetic stand-in in the real format (`synth`), used without --data or
$FAIRBENCH_HAM10000. Registered like a user's dataset file, through `fairbench.register_dataset`; the only
Python here is the generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairbench.datasets.tablefile import dataset_class
from fairbench.datasets.tablespec import read_dataset_file
from fairbench.registry import register_dataset

SPEC = read_dataset_file(Path(__file__).with_name("ham10000.toml"))


@register_dataset(SPEC.name, description=SPEC.description)
class HAM10000(dataset_class(SPEC)):  # type: ignore[misc]
    """HAM10000 from its dataset file, with a synthetic stand-in."""

    def default_path(self, cache_dir: Path | None = None) -> Path:
        from fairbench.datasets.ham10000.synth import DEFAULTS, cached_synthetic

        return cached_synthetic(DEFAULTS, cache_dir, "the default synthetic HAM10000")

    def pretraining_data(self, cache_dir: Path | None = None) -> Path:
        """Another seed of the generator, so `tiny` starts from a CLIP pretrained on disjoint images."""
        from fairbench.datasets.ham10000.synth import PRETRAINING, cached_synthetic

        return cached_synthetic(PRETRAINING, cache_dir, "the synthetic HAM10000 pretraining set")

    def synthesize(self, out: Path, **options: Any) -> Path:
        from fairbench.datasets.ham10000.synth import make_synthetic

        return make_synthetic(out, **options)
