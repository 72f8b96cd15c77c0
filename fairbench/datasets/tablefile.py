"""Registering dataset files: one `.toml` file, or every one in a folder, becomes a registered dataset through
`fairbench.register_dataset`, the path every dataset (built-in or plugin) takes.

`--dataset path/to/ds.toml` and `--plugin path/to/folder` (or $FAIRBENCH_PLUGINS) reach here through the
registry, which imports this module by name, as it imports a plugin. A package may also build its dataset class
from a shipped file and add a synthetic generator (`dataset_class`, then `register_dataset`).
"""

from __future__ import annotations

from pathlib import Path

from fairbench.datasets.table import TableDataset
from fairbench.datasets.tablespec import TableSpec, read_dataset_file
from fairbench.registry import DATASETS, register_dataset

DATASET_FILE_SUFFIX = ".toml"
_BY_FILE: dict[Path, type[TableDataset]] = {}  # resolved file → the class registered from it


def dataset_class(spec: TableSpec, base: type[TableDataset] = TableDataset) -> type[TableDataset]:
    """A (not yet registered) dataset class carrying the spec's label, classes, attributes, prompts and card."""
    attrs = {
        "__doc__": spec.description,
        "__module__": __name__,
        "spec": spec,
        "tag": spec.tag,
        "synthetic_tag": spec.synthetic_tag,
        "label": spec.label,
        "classes": spec.classes,
        "attributes": {a.name: dict(enumerate(a.names)) for a in spec.attributes},
        "prompts": spec.prompts,
        "text_sources": spec.text_sources,
        "env_var": spec.env_var,
        "card": spec.card,
    }
    return type(f"DatasetFile_{spec.name.replace('-', '_').replace('.', '_')}", (base,), attrs)


def register_dataset_file(path: str | Path) -> type[TableDataset]:
    """Register the dataset a dataset file declares (once per file); DatasetError on a bad file, ValueError when its
    name or tag is taken by another dataset."""
    resolved = Path(path).expanduser().resolve()
    if resolved in _BY_FILE:
        return _BY_FILE[resolved]
    spec = read_dataset_file(resolved)
    existing = DATASETS.entries.get(spec.name)
    if existing is not None:
        where = getattr(getattr(existing, "spec", None), "path", None) or existing.__module__
        raise ValueError(f"{resolved}: dataset name {spec.name!r} is already registered by {where}; give the file "
                         "another name")
    cls = dataset_class(spec)
    cls.dataset_file = str(resolved)
    cls = register_dataset(spec.name, description=spec.description)(cls)
    _BY_FILE[resolved] = cls
    return cls


def register_dataset_folder(folder: str | Path) -> list[type[TableDataset]]:
    """Register every dataset file directly in `folder`, in name order."""
    files = sorted(Path(folder).glob(f"*{DATASET_FILE_SUFFIX}"))
    return [register_dataset_file(p) for p in files]


def registered_dataset_files() -> list[Path]:
    """The dataset files registered in this process."""
    return list(_BY_FILE)


def unregister_dataset_file(path: str | Path) -> None:
    """Forget the dataset registered from `path` (a test, or a long-lived process about to read an edited file)."""
    cls = _BY_FILE.pop(Path(path).expanduser().resolve(), None)
    if cls is not None:
        DATASETS.remove(cls.name)
