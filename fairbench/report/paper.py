"""The Fair-MoE paper's published numbers (Tables 1–6), for side-by-side comparison.

The CSV lives in the repository's results/paper/ (see its README for the source and caveats); the build
copies that folder into the package as `fairbench/reference/`, so an installed fairbench finds it without
the repository. Values are × 100 as printed; `std` is NaN where the paper prints none (Tables 4–6).
Its `dataset` column is the results tag of the data the paper measured, so comparisons with runs on
other data are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PAPER_FILE = "fair-moe-tables.csv"
PAPER_CITATION = "Wang, Tong, Liu, Liu (2025), Fair-MoE, Tables 1–6"
# the released code keeps the epoch with the best test AUC (FairCLIP's finetune_FairCLIP.py, line 263)
PAPER_SELECTION = "test"
_REQUIRED = ("table", "attribute", "method", "arch", "metric", "mean", "std")
# The paper's backbone names ↔ fairbench arch names.
ARCH_ALIASES = {"vit-b/16": "b16", "vitb16": "b16", "vit-l/14": "l14", "vitl14": "l14"}


class PaperTableError(ValueError):
    """The published-numbers CSV is missing or malformed."""


@dataclass(frozen=True)
class PaperValue:
    mean: float
    std: float  # NaN when the paper prints none
    table: int


def normalise_arch(arch: str) -> str:
    key = str(arch).strip().lower()
    return ARCH_ALIASES.get(key, ARCH_ALIASES.get(key.replace(" ", ""), key))


def packaged_csv() -> Traversable:
    """The copy inside an installed package (absent in a source checkout, which has results/paper/)."""
    return files("fairbench").joinpath("reference", PAPER_FILE)


def candidate_paths(out: Path | None = None) -> list[Path | Traversable]:
    """Where the CSV may be: <out>/paper/, then the installed package, then a source checkout's results/paper/."""
    paths: list[Path | Traversable] = [Path(out) / "paper" / PAPER_FILE] if out is not None else []
    paths += [packaged_csv(), Path(__file__).resolve().parents[2] / "results" / "paper" / PAPER_FILE]
    return paths


def find_paper_csv(out: Path | None = None) -> Path | Traversable:
    for path in candidate_paths(out):
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidate_paths(out))
    raise PaperTableError(f"published numbers {PAPER_FILE} not found (looked in {tried}); "
                          "reinstall fairbench, or restore results/paper/ in a source checkout")


class PaperTables:
    """Lookup of published mean ± std by (attribute, method, arch, metric), Table 1 preferred."""

    def __init__(self, frame: pd.DataFrame, source: str) -> None:
        missing = [c for c in _REQUIRED if c not in frame.columns]
        if missing:
            raise PaperTableError(f"{source}: missing column(s) {', '.join(missing)}; restore the shipped CSV")
        frame = frame.copy()
        frame["arch"] = frame["arch"].map(normalise_arch)
        frame["table"] = frame["table"].astype(int)
        self.frame = frame.sort_values("table", kind="stable")
        self.source = source
        tags = sorted(set(frame["dataset"].dropna().astype(str))) if "dataset" in frame.columns else []
        if len(tags) > 1:
            raise PaperTableError(f"{source}: rows name several datasets ({', '.join(tags)}); keep one per file")
        self.dataset: str | None = tags[0] if tags else None  # results tag of the paper's data; None: not stated
        self._index: dict[tuple[str, str, str, str], PaperValue] = {}
        for row in self.frame.itertuples(index=False):
            key = (row.attribute, row.method, row.arch, row.metric)
            self._index.setdefault(key, PaperValue(float(row.mean), float(row.std), int(row.table)))

    @classmethod
    def load(cls, path: Path | None = None, out: Path | None = None) -> PaperTables:
        path = Path(path) if path is not None else find_paper_csv(out)
        try:
            with path.open("rb") as fh:  # a Traversable need not be a filesystem path
                frame = pd.read_csv(fh)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise PaperTableError(f"{path}: not a readable CSV ({exc}); restore the shipped file") from None
        return cls(frame, str(path))

    def get(self, attribute: str, method: str, arch: str, metric: str) -> PaperValue | None:
        """Published value (× 100) for a fairbench metric key such as "es_auc", or None. The CSV names a metric by
        its column label in the paper, which is the registered metric's label ("ES-AUC")."""
        from fairbench.registry import METRICS

        name = METRICS.get(metric).label if metric in METRICS else metric
        return self._index.get((attribute, method, normalise_arch(arch), name))
