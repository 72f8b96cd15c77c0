"""Datasets: the contract every dataset implements, and helpers for writing one.

`fairbench.datasets.builtin` registers the datasets that ship with fairbench, through the same public
`register_dataset` path a user's plugin uses. What a plugin imports:

    from fairbench import register_dataset
    from fairbench.datasets import Dataset, DatasetError, tensors_from_arrays

`tensors_from_arrays`, `normalize_images` and `fingerprint_files` load numpy/torch, so they are
imported on first use and `import fairbench.datasets` stays cheap for the CLI.
"""

from fairbench.datasets.base import (
    UNKNOWN,
    CheckReport,
    DataIdentity,
    Dataset,
    DatasetError,
    LoadedDataset,
    SplitReport,
    SplitTensors,
)

_LAZY = {
    "tensors_from_arrays": "fairbench.datasets.tensors",
    "normalize_images": "fairbench.datasets.tensors",
    "resize_center_crop": "fairbench.datasets.tensors",
    "fingerprint_files": "fairbench.datasets.cache",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fairbench.datasets' has no attribute {name!r}")


__all__ = ["UNKNOWN", "CheckReport", "DataIdentity", "Dataset", "DatasetError", "LoadedDataset", "SplitReport",
           "SplitTensors", *_LAZY]
