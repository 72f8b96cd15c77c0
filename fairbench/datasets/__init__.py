"""Datasets: the contract every dataset implements, and the registry that finds them by name.

`fairbench.datasets.builtin` registers the datasets that ship with fairbench, through the same public
`register_dataset` path a user's plugin uses.
"""

from fairbench.datasets.base import (
    UNKNOWN,
    DataIdentity,
    Dataset,
    DatasetError,
    LoadedDataset,
    SplitTensors,
)

__all__ = ["UNKNOWN", "DataIdentity", "Dataset", "DatasetError", "LoadedDataset", "SplitTensors"]
