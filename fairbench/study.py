"""Studies: a TOML file that names a whole experiment (methods × archs × attributes × seeds, selection rule,
dataset, settings), so `fairbench run --study NAME` plans it and `table/report --study NAME` show exactly it.

A study file has these keys (all but `methods` optional):

    name        = "my-study"              # default: the file name without .toml
    description = "one line"
    dataset     = "mydata"                # a registered dataset; default: the registry's default dataset
    protocol    = "fairbench"             # the training protocol, as `--protocol`
    methods     = ["clip", "mymethod*"]   # names or wildcards, as `--method`
    archs       = ["b16", "l14"]          # default ["tiny"]
    attributes  = ["sex", "site"]         # training attributes; default: all of the dataset's
    seeds       = 3                       # 0..N-1, or an explicit list [0, 1, 2]; at most 1000 seeds
    select      = "test"                  # a selection rule (val | test); default: the protocol's rule
    [set]                                 # settings, as `--set key=value`
    fair_lambda = 1e-5

Studies shipped with fairbench live in the repository's `studies/` folder, installed as `fairbench/studies/`.
This module reads files and compares records; it trains nothing. A study's jobs come from its `request()`, the
same `fairbench.runs.request.JobRequest` that `fairbench run --method ...` builds from options.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from fairbench.protocols import DEFAULT_PROTOCOL, protocol_of
from fairbench.runs.request import JobRequest, RequestError, check_seeds, seed_range
from fairbench.selection import DEFAULT_RULE, select_rule_names

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

STUDY_SUFFIX = ".toml"
DEFAULT_SELECT = DEFAULT_RULE  # what a study without `select` and without a protocol rule selects by
KEYS = ("name", "description", "dataset", "protocol", "methods", "archs", "attributes", "seeds", "select", "set")


class StudyError(ValueError):
    """A study that cannot be found or read; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Study:
    name: str
    source: str  # where it was read from
    methods: tuple[str, ...]  # as written: names and wildcards
    archs: tuple[str, ...] = ("tiny",)
    attributes: tuple[str, ...] | None = None  # None: every attribute of the dataset
    seeds: tuple[int, ...] = (0, 1, 2)
    select: str | None = None  # None: the protocol's rule
    dataset: str | None = None  # None: the registry's default dataset
    protocol: str = DEFAULT_PROTOCOL
    overrides: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def request(self, overrides: dict[str, str] | None = None) -> JobRequest:
        """The study's jobs as a request (plus `overrides`, e.g. a `--set` given with `run --study`)."""
        return JobRequest(methods=self.methods, archs=self.archs, attributes=self.attributes, seeds=self.seeds,
                          protocol=self.protocol, select=self.select, dataset=self.dataset,
                          overrides={**self.overrides, **(overrides or {})},
                          source=f"study {self.name} ({self.source})")

    @property
    def selection_rule(self) -> str:
        """`select`, else the protocol's rule (protocols registered by plugins need those loaded)."""
        return self.request().selection_rule


# ------------------------------------------------------------------ finding and reading


def shipped_dirs() -> list[Any]:
    """Where shipped studies live: the installed package's copy, then a source checkout's studies/ folder."""
    return [files("fairbench").joinpath("studies"), Path(__file__).resolve().parents[1] / "studies"]


def shipped_studies() -> dict[str, Any]:
    """Name → file of every study shipped with fairbench (the installed copy wins over a checkout's)."""
    found: dict[str, Any] = {}
    for folder in shipped_dirs():
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(STUDY_SUFFIX):
                found.setdefault(entry.name[:-len(STUDY_SUFFIX)], entry)
    return found


def load_study(name_or_path: str | Path) -> Study:
    """A shipped study by name (`fair-moe-paper`) or any study file by path (`path/to/file.toml`)."""
    text = str(name_or_path)
    if text.endswith(STUDY_SUFFIX) or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise StudyError(f"study file {path} not found; pass an existing .toml file or a shipped study name "
                             f"({', '.join(shipped_studies()) or 'none shipped'})")
        return parse_study(_read(path), source=str(path), default_name=path.stem)
    shipped = shipped_studies()
    if text not in shipped:
        raise StudyError(f"unknown study {text!r}; use one of {', '.join(shipped) or '(none shipped)'}, "
                         "or pass a path to a .toml study file")
    return parse_study(_read(shipped[text]), source=str(shipped[text]), default_name=text)


def _read(path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"study file {path}: cannot be read ({exc})") from None


def parse_study(text: str, source: str, default_name: str = "study") -> Study:
    """Validate a study file's text; every problem is a StudyError naming the file, the key and what fits."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study file {source}: not valid TOML ({exc}); fix that line") from None
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise StudyError(f"study file {source}: unknown key {unknown[0]!r}; known keys: {', '.join(KEYS)}")
    where = f"study file {source}"
    if "methods" not in data:
        raise StudyError(f"{where}: no 'methods' list; add e.g. methods = [\"clip\", \"fairclip\"]")
    seeds = data.get("seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, list)):
        raise StudyError(f"{where}: 'seeds' must be a count (3 → seeds 0, 1, 2) or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int) and seeds < 1:
        raise StudyError(f"{where}: 'seeds' must be at least 1, got {seeds}")
    try:
        seeds = seed_range(seeds, "'seeds' =") if isinstance(seeds, int) else check_seeds(seeds, "'seeds'")
    except RequestError as exc:
        raise StudyError(f"{where}: {exc}") from None
    select = data.get("select")
    rules = select_rule_names()
    if select is not None and select not in rules:
        raise StudyError(f"{where}: 'select' must be one of {', '.join(f'{r!r}' for r in rules)}, got {select!r} "
                         "(a plugin's rule needs the plugin loaded)")
    overrides = data.get("set", {})
    if not isinstance(overrides, dict):
        raise StudyError(f"{where}: 'set' must be a table ([set] with key = value lines), got {overrides!r}")
    for key, value in overrides.items():
        if isinstance(value, (dict, list)):
            raise StudyError(f"{where}: set.{key} must be a single value, got {value!r}")
    attributes = data.get("attributes")
    return Study(
        name=_string(data, "name", where, default_name),
        source=source,
        methods=tuple(_names(data, "methods", where)),
        archs=tuple(_names(data, "archs", where) if "archs" in data else ["tiny"]),
        attributes=None if attributes is None else tuple(_names(data, "attributes", where)),
        seeds=tuple(seeds),
        select=select,
        dataset=_string(data, "dataset", where, None),
        protocol=_string(data, "protocol", where, DEFAULT_PROTOCOL),
        overrides={k: _setting(v) for k, v in overrides.items()},
        description=_string(data, "description", where, ""),
    )


def _string(data: dict, key: str, where: str, default: str | None) -> str | None:
    value = data.get(key, default)
    if value is not None and not isinstance(value, str):
        raise StudyError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _names(data: dict, key: str, where: str) -> list[str]:
    value = data[key]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise StudyError(f"{where}: {key!r} must be a non-empty list of names, e.g. {key} = [\"a\", \"b\"]; "
                         f"got {value!r}")
    return [v.strip() for v in value]


def _setting(value: Any) -> str:
    """A TOML value as the `--set key=value` text the settings parser reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ------------------------------------------------------------------ jobs and records


def study_jobs(study: Study) -> list:
    """The study's jobs (methods expanded, attribute-free methods once per seed), as `fairbench run` plans them.

    Needs the methods registered (`fairbench.registry.load_plugins`); raises StudyError (one line naming the study)
    for a name the registry does not know.
    """
    try:
        return study.request().jobs()
    except RequestError as exc:
        raise StudyError(str(exc)) from None


def _key(method: str, arch: str, attribute: str | None, seed: int) -> tuple:
    return (method, arch, attribute, int(seed))


def study_records(study: Study, records: list[dict[str, Any]], jobs: list | None = None) -> list[dict[str, Any]]:
    """The records that are runs of the study: one of its jobs, its protocol, selection rule and dataset."""
    wanted = {_key(j.method, j.arch, j.attribute, j.seed) for j in (jobs if jobs is not None else study_jobs(study))}
    rule = study.selection_rule
    dataset = study.request().dataset_class.name

    def belongs(rec: dict[str, Any]) -> bool:
        try:
            key = _key(rec["method"], rec["arch"], rec.get("attribute"), rec["seed"])
        except (KeyError, TypeError, ValueError):
            return False
        return (key in wanted and rec["selection"].get("rule") == rule and protocol_of(rec) == study.protocol
                and rec["dataset"].get("name", dataset) == dataset)

    return [rec for rec in records if belongs(rec)]


def missing_runs(study: Study, records: list[dict[str, Any]], jobs: list | None = None) -> list[str]:
    """One line per (method, arch, attribute) short of the study's seeds, e.g. "mymethod l14 site: 1 of 3 seeds"."""
    jobs = jobs if jobs is not None else study_jobs(study)
    found: dict[tuple, set[int]] = defaultdict(set)
    for rec in study_records(study, records, jobs):
        found[(rec["method"], rec["arch"], rec.get("attribute"))].add(int(rec["seed"]))
    cells: dict[tuple, list[int]] = defaultdict(list)
    for j in jobs:
        cells[(j.method, j.arch, j.attribute)].append(j.seed)
    lines = []
    for (method, arch, attribute), seeds in cells.items():
        have = len(found[(method, arch, attribute)] & set(seeds))
        if have < len(seeds):
            lines.append(f"{method} {arch} {attribute or '-'}: {have} of {len(seeds)} seeds")
    return lines

