"""The dataset contract: everything the core needs to know about a dataset, and nothing it may assume.

The trainer, metrics, reports and CLI read a dataset's label, class names, protected attributes (with their
group codes and names), zero-shot prompts and text sources from its `Dataset` subclass, and get tensors only
through `load`. Built-in datasets register through `fairbench.register_dataset`, exactly as a user's plugin
does, so the core never names one.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

from fairbench.datasets.card import DataCard
from fairbench.datasets.errors import DatasetError, short_error  # noqa: F401 - re-exported

UNKNOWN = -1  # attribute code of a sample whose group is not known


@dataclass
class SplitTensors:
    """One split. `images` is uint8 (N, 3, S, S) (possibly an expanded view of one channel: normalise it, never
    write to it); `labels` are 0/1; attribute codes are the dataset's, −1 = unknown; `sample_ids` name samples
    in prediction files."""

    images: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    attributes: dict[str, torch.Tensor]
    sample_ids: list[str]
    texts: list[str]
    n_dropped: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class LoadedDataset:
    """The three splits plus what identifies the data; `tag` names the results folder, so results on
    different data (real vs synthetic, one dataset vs another) never mix."""

    name: str
    root: Path
    synthetic: bool
    tag: str
    fingerprint: str
    train: SplitTensors
    val: SplitTensors
    test: SplitTensors
    text_source: str = field(default="")

    def split(self, name: str) -> SplitTensors:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass
class SplitReport:
    """What `Dataset.check` found in one split folder."""

    folder: str
    n_files: int = 0
    n_valid: int = 0
    n_positive: int = 0  # valid samples with label 1
    n_unknown: int = 0  # samples with any −1 attribute (dropped from evaluation splits)
    # (attribute, code, label) → count; code −1 = unknown
    counts: Counter = field(default_factory=Counter)
    image_shapes: Counter = field(default_factory=Counter)


@dataclass
class CheckReport:
    """Every problem of a dataset folder, plus the split × group × label counts `fairbench data check` shows."""

    root: Path
    synthetic: bool = False
    splits: dict[str, SplitReport] = field(default_factory=dict)  # "train", "val", "test" in that order
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DataIdentity:
    """Who the data is, known without loading a tensor: what the job planner needs for run folders."""

    root: Path
    synthetic: bool
    tag: str
    fingerprint: str
    n_train: int = 0  # training samples (files), for duration estimates


class Dataset:
    """Base class of every dataset; subclass it and decorate with `fairbench.register_dataset`.

    Class attributes describe the data; methods find, identify, load, check and (optionally) synthesise it.
      tag             results-folder tag of the real data (`synthetic_tag` for data from `synthesize`); unique
                      among registered datasets, so results on different data never share a folder
      label           what the binary label means, e.g. "melanoma"
      classes         display names of label 0 and label 1
      attributes      protected attribute → {group code: group name}, in the order tables show them
      prompts         zero-shot prompts of class 0 and class 1 (p(class 1) = softmax over cosine similarities)
      text_sources    the training texts `load` can build; the first is the default
      env_var         environment variable naming the data folder when --data is not given
      card            source, licence, citation, access, download source and pitfalls (`fairbench data info`)
    Only `load` must be written; `identify` defaults to a content hash of every file under the folder.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    tag: ClassVar[str] = ""
    synthetic_tag: ClassVar[str] = ""
    label: ClassVar[str] = "label"
    classes: ClassVar[tuple[str, str]] = ("negative", "positive")
    attributes: ClassVar[dict[str, dict[int, str]]] = {}
    prompts: ClassVar[tuple[str, str]] = ("", "")
    text_sources: ClassVar[tuple[str, ...]] = ("default",)
    env_var: ClassVar[str | None] = None
    card: ClassVar[DataCard] = DataCard()
    dataset_file: ClassVar[str | None] = None  # the dataset file (.toml) it was registered from, which every process
    # that runs its jobs registers again (a worker, a SLURM job); None for a dataset a module registers

    # ------------------------------------------------------------------ where the data is
    def resolve(self, data: str | os.PathLike[str] | None, cache_dir: Path | None = None) -> Path:
        """The folder to use: `data`, else $env_var, else the default synthetic data (generated once)."""
        chosen = data if data else (os.environ.get(self.env_var) if self.env_var else None) or None
        if chosen is None:
            path = self.default_path(cache_dir)
            if path is None:
                raise DatasetError(f"dataset {self.name!r} has no default data; pass --data FOLDER"
                                   + (f" or set ${self.env_var}" if self.env_var else ""))
            return path
        path = Path(chosen).expanduser()
        if not path.is_dir():
            source = self.env_var if not data else "--data"
            raise DatasetError(f"{path}: dataset folder not found (from {source}); pass the folder of a "
                               f"{self.name} dataset")
        return path.resolve()

    def default_path(self, cache_dir: Path | None = None) -> Path | None:
        """Where the built-in synthetic stand-in lives (made on first use); None if the dataset has none."""
        return None

    def pretraining_data(self, cache_dir: Path | None = None) -> Path | None:
        """A folder in this dataset's format, disjoint from the data runs use, on which archs without published
        weights (`tiny`) are CLIP-pretrained once before every method fine-tunes them (fairbench.training.pretrain), as
        the real study fine-tunes OpenAI CLIP. None (the default): such archs start from random init."""
        return None

    # ------------------------------------------------------------------ identity, tensors, checks
    def identify(self, root: Path, text_source: str) -> DataIdentity:
        """Tag and content fingerprint of the data at `root`, without loading a tensor.

        The default hashes the bytes of every file under `root` (fine for small data; override it with a
        cheaper key, e.g. names, sizes and checksums, for large folders)."""
        from fairbench.datasets.cache import fingerprint_files

        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return DataIdentity(root=root, synthetic=False, tag=self.tag or self.name,
                            fingerprint=fingerprint_files(files, relative_to=root))

    def load(self, root: Path, *, image_size: int, tokenize: Callable[[list[str]], torch.Tensor],
             tokenizer_key: str, text_source: str, cache_dir: Path | None = None) -> LoadedDataset:
        """Validate and load the three splits; raise DatasetError (naming the file and fix) on bad data.

        `fairbench.datasets.tensors_from_arrays` turns arrays into a split; `loaded` assembles the result."""
        raise NotImplementedError(f"dataset {self.name!r} does not implement load()")

    def check(self, root: Path) -> CheckReport:
        """A full report of every problem and the group × label counts (`fairbench data check`); optional."""
        raise NotImplementedError(f"dataset {self.name!r} has no checker")

    def synthesize(self, out: Path, **options: Any) -> Path:
        """Write a synthetic dataset in the real on-disk format; optional."""
        raise NotImplementedError(f"dataset {self.name!r} has no synthetic generator")

    # ------------------------------------------------------------------ helpers
    def loaded(self, root: Path, text_source: str, *, train: SplitTensors, val: SplitTensors,
               test: SplitTensors) -> LoadedDataset:
        """The LoadedDataset of three splits, tagged and fingerprinted by `identify`."""
        who = self.identify(Path(root), text_source)
        return LoadedDataset(name=self.name, root=who.root, synthetic=who.synthetic, tag=who.tag,
                             fingerprint=who.fingerprint, train=train, val=val, test=test, text_source=text_source)

    @classmethod
    def check_text_source(cls, text_source: str | None) -> str:
        source = text_source or cls.text_sources[0]
        if source not in cls.text_sources:
            raise DatasetError(f"unknown text source {source!r} for dataset {cls.name!r}; choose one of "
                               f"{', '.join(cls.text_sources)}")
        return source

    @classmethod
    def check_attributes(cls, attributes: list[str] | None) -> list[str]:
        """`attributes`, or all of the dataset's when None; an unknown one is a DatasetError naming the valid ones."""
        unknown = [a for a in attributes or [] if a not in cls.attributes]
        if unknown:
            raise DatasetError(f"unknown attribute {unknown[0]!r} for dataset {cls.name!r}; use one or more of "
                               f"{', '.join(cls.attributes)}")
        return list(attributes) if attributes else list(cls.attributes)
