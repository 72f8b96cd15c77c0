"""A dataset's card: where the data comes from, its licence and citation, how to get it, and what to watch for.

`fairbench data info NAME` prints it, the HTML report carries the card of the data it reports, and `fairbench data
download NAME` reads its download source. Plain data (stdlib only): every dataset class has one (`Dataset.card`),
a dataset file's `[card]` table fills it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset repository holding the data (`fairbench data download`).

    repo_id        "org/name" of the dataset repository
    revision       branch, tag or commit
    include        glob patterns of the repository files to fetch (empty: all)
    root_file      a file that marks the dataset's root folder inside the repository (searched at the top and one
                   folder down), for repositories that keep the data in a subfolder; empty: the top
    extract        unpack the .zip archives of the repository into the dataset folder
    """

    repo_id: str
    revision: str = "main"
    include: tuple[str, ...] = ()
    root_file: str = ""
    extract: bool = True

    @property
    def page(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}"


@dataclass(frozen=True)
class DataCard:
    """What a user must know before reporting numbers on a dataset. Empty fields are shown as 'not stated'."""

    source: str = ""  # where the data is published (URL, DOI)
    licence: str = ""
    citation: str = ""
    access: str = ""  # how to obtain it when `data download` cannot (credentials, a form, a manual download)
    label_mapping: str = ""  # how the binary label is derived from the source's labels
    pitfalls: tuple[str, ...] = ()  # known ways numbers on this data are mis-compared or mis-read
    download: HubSource | None = None
    extra: dict[str, str] = field(default_factory=dict)  # further "key: value" lines (e.g. the split recipe)

    def lines(self) -> list[tuple[str, str]]:
        """(field, text) pairs in display order; every field present, 'not stated' where empty."""
        out = [("source", self.source), ("licence", self.licence), ("citation", self.citation),
               ("label mapping", self.label_mapping), *self.extra.items(),
               ("download", f"fairbench data download (Hugging Face {self.download.page})" if self.download
                            else "none: see access"),
               ("access", self.access)]
        out += [("pitfall", p) for p in self.pitfalls]
        return [(k, v or "not stated") for k, v in out]
