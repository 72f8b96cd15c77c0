"""A dataset file: a TOML description of a metadata table plus image files, read into a `TableSpec`.

Most preprocessed fairness datasets are one table (image path, label, attribute columns) beside a folder of
images; a dataset file says which column is which, so such data runs without a Python plugin. The README's
"Bring your own data" section documents every key; this module checks them and names the key and the fix for
every mistake (one line, the file first). Stdlib only: the CLI reads dataset files to list datasets.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairbench.datasets.card import DataCard, HubSource
from fairbench.datasets.errors import DatasetError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SPLIT_NAMES = ("train", "val", "test")
CLOSED = ("right", "left")  # numeric bins: "right" = (a, b] (the edge joins the lower bin), "left" = [a, b)


@dataclass(frozen=True)
class AttributeSpec:
    """One protected attribute: a column whose values map to groups (`values[group] = cell texts`), or a numeric
    column cut at `bins` into `names` (len(bins) + 1 groups). Empty cells and `unknown` values get code −1."""

    name: str
    column: str
    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...] = ()  # per group, the cell texts that mean it (categorical)
    bins: tuple[float, ...] = ()  # ascending edges (numeric)
    closed: str = "right"
    unknown: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        return bool(self.bins)


@dataclass(frozen=True)
class TableSpec:
    """Everything a dataset file declares; `path` is the file, `digest` the SHA-256 of what it declares that can change
    a number (enters the data's fingerprint, so editing the label mapping, a bin edge or a prompt changes every config
    hash of runs on it; the card, names and paths do not)."""

    path: Path
    name: str
    description: str
    tag: str
    synthetic_tag: str
    env_var: str | None
    data: Path | None  # the data folder when neither --data nor $env_var names one (relative paths: to the file)
    card: DataCard
    tables: tuple[str, ...]  # alternative names of the one metadata CSV (the first found is read)
    split_files: dict[str, str]  # split → its own CSV (instead of `tables` + a split rule)
    id_column: str
    image: str  # template over columns giving the image's path below an image folder
    image_dirs: tuple[str, ...]
    patient_column: str | None
    split_column: str | None
    split_values: dict[str, tuple[str, ...]]
    split_fractions: dict[str, float]
    split_seed: int
    label_column: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]  # empty: every other non-empty value is negative
    label: str
    classes: tuple[str, str]
    prompts: tuple[str, str]
    attributes: tuple[AttributeSpec, ...]
    text_column: str | None
    text_template: str | None
    text_values: dict[str, dict[str, str]]
    channels: int
    digest: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def columns(self) -> list[str]:
        """Every column the spec reads (for the missing-column check)."""
        cols = [self.id_column, self.label_column, *(a.column for a in self.attributes), *template_fields(self.image)]
        cols += [c for c in (self.patient_column, self.split_column, self.text_column) if c]
        if self.text_template:
            cols += template_fields(self.text_template)
        return list(dict.fromkeys(cols))

    @property
    def text_sources(self) -> tuple[str, ...]:
        return tuple(s for s in (self.text_column, "caption" if self.text_template else None) if s)


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


class _Reader:
    """Typed access to one TOML table, with errors that name the file and the key."""

    def __init__(self, path: Path, data: dict[str, Any], where: str = "") -> None:
        self.path, self.data, self.where = path, data, where

    def fail(self, key: str, why: str) -> DatasetError:
        return DatasetError(f"{self.path}: {self.where}{key}: {why}")

    def sub(self, key: str, required: bool = False) -> _Reader:
        value = self.data.get(key, None)
        if value is None:
            if required:
                raise self.fail(key, "missing table; see the README's 'Bring your own data'")
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {value!r}")
        return _Reader(self.path, value, f"{self.where}{key}.")

    def str(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key, default)
        if value is None and required:
            raise self.fail(key, "missing; see the README's 'Bring your own data'")
        if value is not None and (not isinstance(value, str) or (required and not value.strip())):
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        return value

    def strs(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.data.get(key, list(default))
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a string or a list of strings, got {value!r}")
        return tuple(value)

    def unknown_keys(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.fail(extra[0], f"unknown key; use one of {', '.join(sorted(allowed))}")


def read_dataset_file(path: str | Path) -> TableSpec:
    """Parse and check a dataset file; a DatasetError naming the file and key on any mistake."""
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: dataset file not found; pass the path of a .toml dataset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable dataset file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    top = _Reader(path, data)
    top.unknown_keys({"name", "description", "tag", "synthetic_tag", "env", "data", "card", "table", "split", "label",
                      "attributes", "text", "images"})
    name = top.str("name", required=True)
    card = _card(top.sub("card"))
    table = top.sub("table", required=True)
    table.unknown_keys({"csv", "id", "image", "image_dirs", "patient"})
    split = top.sub("split", required=True)
    split.unknown_keys({"column", "values", "files", "fractions", "seed"})
    tables = table.strs("csv")
    split_files = {k: v for k, v in split.sub("files").data.items()}
    split_column = split.str("column")
    fractions = split.sub("fractions").data
    rules = [bool(split_files), split_column is not None, bool(fractions)]
    if sum(rules) != 1:
        raise split.fail("", "give exactly one of column (a split column), files (one CSV per split) or fractions "
                         "(a seeded split that fairbench draws)")
    if split_files and (sorted(split_files) != sorted(SPLIT_NAMES) or not all(isinstance(v, str) for v in
                                                                               split_files.values())):
        raise split.fail("files", f"name one CSV for each of {', '.join(SPLIT_NAMES)}")
    if not split_files and not tables:
        raise table.fail("csv", "missing: name the metadata CSV (relative to the data folder)")
    values = split.sub("values")
    split_values = {s: values.strs(s, (s,)) for s in SPLIT_NAMES}
    if fractions:
        if sorted(fractions) != sorted(SPLIT_NAMES) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1 for v in fractions.values()) \
                or abs(sum(fractions.values()) - 1.0) > 1e-9:
            raise split.fail("fractions", "give train, val and test fractions, each in (0, 1), summing to 1")
    seed = split.data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise split.fail("seed", f"must be a non-negative integer, got {seed!r}")
    label = top.sub("label", required=True)
    label.unknown_keys({"column", "positive", "negative", "name", "classes", "prompts"})
    positive = label.strs("positive")
    if not positive:
        raise label.fail("positive", "list the label column's values that mean class 1")
    negative = label.strs("negative")
    if set(positive) & set(negative):
        raise label.fail("negative", f"{sorted(set(positive) & set(negative))[0]!r} is also listed as positive")
    classes = label.strs("classes", ("negative", "positive"))
    prompts = label.strs("prompts", (f"A photo of {classes[0]}", f"A photo of {classes[1]}") if len(classes) == 2
                         else ())
    for key, pair in (("classes", classes), ("prompts", prompts)):
        if len(pair) != 2:
            raise label.fail(key, "give two strings: class 0's, then class 1's")
    attributes = tuple(_attribute(top.sub("attributes", required=True), a) for a in top.sub("attributes").data)
    if not attributes:
        raise top.fail("attributes", "declare at least one protected attribute")
    text = top.sub("text")
    text.unknown_keys({"column", "template", "values"})
    text_column, template = text.str("column"), text.str("template")
    if bool(text_column) == bool(template):
        raise text.fail("", "give one of column (the training text's column) or template (a caption built from "
                        "columns, e.g. 'A photo of {dx}')")
    if template is not None:
        try:
            template_fields(template)
        except ValueError as exc:
            raise text.fail("template", f"not a valid template ({exc})") from None
    text_values = {k: {str(a): str(b) for a, b in v.items()} for k, v in text.sub("values").data.items()
                   if isinstance(v, dict)}
    images = top.sub("images")
    images.unknown_keys({"channels"})
    channels = images.data.get("channels", 3)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise images.fail("channels", f"must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    image = table.str("image", required=True)
    try:
        template_fields(image)
    except ValueError as exc:
        raise table.fail("image", f"not a valid template ({exc})") from None
    spec = TableSpec(
        path=path, name=name, description=top.str("description", "") or f"dataset file {path.name}",
        tag=top.str("tag", name), synthetic_tag=top.str("synthetic_tag", f"{name}-synthetic"),
        env_var=top.str("env"), data=(path.parent / data).resolve() if (data := top.str("data")) else None,
        card=card, tables=tables, split_files=split_files,
        id_column=table.str("id", required=True), image=image, image_dirs=table.strs("image_dirs", (".",)),
        patient_column=table.str("patient"), split_column=split_column, split_values=split_values,
        split_fractions={s: float(fractions[s]) for s in SPLIT_NAMES} if fractions else {}, split_seed=seed,
        label_column=label.str("column", required=True), positive=positive, negative=negative,
        label=label.str("name", "label"), classes=(classes[0], classes[1]), prompts=(prompts[0], prompts[1]),
        attributes=attributes, text_column=text_column, text_template=template, text_values=text_values,
        channels=channels)
    prose = ("path", "data", "card", "description", "name", "tag", "synthetic_tag", "env_var")  # change no number
    body = json.dumps({k: v for k, v in _plain(spec).items() if k not in prose},
                      sort_keys=True)
    return _with_digest(spec, hashlib.sha256(body.encode()).hexdigest()[:16])


def _with_digest(spec: TableSpec, digest: str) -> TableSpec:
    from dataclasses import replace

    return replace(spec, digest=digest)


def _plain(spec: TableSpec) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(spec)
    out["path"], out["data"] = str(spec.path), str(spec.data)
    return out


def _attribute(parent: _Reader, name: str) -> AttributeSpec:
    r = parent.sub(name)
    r.unknown_keys({"column", "groups", "bins", "closed", "unknown"})
    column = r.str("column", name)
    unknown = r.strs("unknown")
    bins = r.data.get("bins")
    groups = r.data.get("groups")
    if bins is not None:
        if not isinstance(bins, list) or not bins or not all(
                isinstance(b, int | float) and not isinstance(b, bool) for b in bins) or sorted(set(bins)) != bins:
            raise r.fail("bins", f"must be a non-empty list of ascending numbers (bin edges), got {bins!r}")
        names = r.strs("groups")
        if len(names) != len(bins) + 1:
            raise r.fail("groups", f"{len(bins)} bin edge(s) make {len(bins) + 1} groups: name each, lowest first")
        closed = r.str("closed", "right")
        if closed not in CLOSED:
            raise r.fail("closed", "'right' puts a value equal to an edge in the lower group ((a, b]); 'left' in "
                         "the upper one ([a, b))")
        return AttributeSpec(name, column, names, bins=tuple(float(b) for b in bins), closed=closed, unknown=unknown)
    if not isinstance(groups, dict) or not groups:
        raise r.fail("groups", "map each group name to its cell value(s), e.g. groups = { Female = ['female'] }, "
                     "or give bins for a numeric column")
    values = []
    for group, cells in groups.items():
        cells = [cells] if isinstance(cells, str) else cells
        if not isinstance(cells, list) or not cells or not all(isinstance(c, str) for c in cells):
            raise r.fail(f"groups.{group}", f"must be a cell value or a list of them, got {cells!r}")
        values.append(tuple(cells))
    flat = [c for cells in values for c in cells]
    if len(set(flat)) != len(flat) or set(flat) & set(unknown):
        raise r.fail("groups", "a cell value may name one group only (and not be listed as unknown)")
    return AttributeSpec(name, column, tuple(groups), values=tuple(values), unknown=unknown)


def _card(r: _Reader) -> DataCard:
    r.unknown_keys({"source", "licence", "license", "citation", "access", "label_mapping", "pitfalls", "download",
                    "extra"})
    download = None
    if "download" in r.data:
        d = r.sub("download")
        d.unknown_keys({"repo", "revision", "include", "root_file", "extract"})
        download = HubSource(repo_id=d.str("repo", required=True), revision=d.str("revision", "main"),
                             include=d.strs("include"), root_file=d.str("root_file", "") or "",
                             extract=bool(d.data.get("extract", True)))
    extra = r.sub("extra").data
    return DataCard(source=r.str("source", ""), licence=r.str("licence", r.str("license", "")),
                    citation=r.str("citation", ""), access=r.str("access", ""),
                    label_mapping=r.str("label_mapping", ""), pitfalls=r.strs("pitfalls"), download=download,
                    extra={str(k): str(v) for k, v in extra.items()})
