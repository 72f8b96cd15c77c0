"""Harvard-FairVLMed: the on-disk format, a preprocessing cache, and a synthetic stand-in.

The trainer's entry point is `load_fairvlmed`; `resolve_dataset_path` picks the dataset (explicit path,
$FAIRBENCH_DATA, or the default synthetic one).
"""

from fairbench.data.dataset import (
    FairVLMedData,
    SplitTensors,
    identify_fairvlmed,
    load_fairvlmed,
    normalize_images,
    resolve_dataset_path,
)
from fairbench.data.format import ATTRIBUTE_GROUPS, DatasetError
from fairbench.data.synth import default_synthetic_dataset, is_synthetic, make_synthetic

__all__ = [
    "ATTRIBUTE_GROUPS",
    "DatasetError",
    "FairVLMedData",
    "SplitTensors",
    "default_synthetic_dataset",
    "identify_fairvlmed",
    "is_synthetic",
    "load_fairvlmed",
    "make_synthetic",
    "normalize_images",
    "resolve_dataset_path",
]
