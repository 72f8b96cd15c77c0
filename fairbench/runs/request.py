"""What a command asks to run, from its options or from a study, as one object: the one road to planned jobs.

`fairbench run`, `status`, `table --study` and `report --study` all build a `JobRequest` (methods, archs,
attributes, seeds, protocol, selection rule, dataset, `--set`) and ask it for its jobs or its planned jobs, so
`status` plans exactly the run folders `run` writes. A study (fairbench.study) builds its request from its own
fields. Everything the user controls is bounded here: at most MAX_SEEDS seeds, each below SEED_LIMIT, and at most
fairbench.runs.jobs.MAX_JOBS jobs; every problem is one RequestError line naming the option (or the study).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairbench.protocols import DEFAULT_PROTOCOL

# Seeds per command: a seed is a training run of every job, and a thousand of each is more than any study needs.
MAX_SEEDS = 1000
SEED_LIMIT = 2**32  # numpy's seed range (the trainer seeds numpy with the run's seed)
DEFAULT_SEEDS = 3
DEFAULT_ARCH = "tiny"


class RequestError(ValueError):
    """A request that cannot be planned; the message is one line naming the option or study and the fix."""


def seed_range(count: int, what: str = "--seeds") -> tuple[int, ...]:
    """Seeds 0..count-1, or a RequestError past MAX_SEEDS (checked before any seed is made)."""
    if count < 1:
        raise RequestError(f"{what} {count}: need at least 1 seed")
    if count > MAX_SEEDS:
        raise RequestError(f"{what} {count}: at most {MAX_SEEDS} seeds (0..{MAX_SEEDS - 1}) per command, because each "
                           "seed is a training run of every job and planning holds every job in memory; split a "
                           "larger sweep into several commands")
    return tuple(range(count))


def check_seeds(seeds: Iterable[Any], what: str = "seeds") -> tuple[int, ...]:
    """An explicit seed list: distinct integers in [0, SEED_LIMIT), at most MAX_SEEDS of them."""
    seeds = list(seeds)
    if len(seeds) > MAX_SEEDS:
        raise RequestError(f"{what}: {len(seeds)} seeds, but at most {MAX_SEEDS} per command (each is a training "
                           "run of every job); split the sweep into several commands")
    if not seeds or len(set(seeds)) != len(seeds) or any(
            isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT for s in seeds):
        raise RequestError(f"{what} must list distinct non-negative integers below 2**32 (numpy's seed range), "
                           f"got {_short(seeds)}")
    return tuple(seeds)


def _short(values: list[Any]) -> str:
    return repr(values) if len(values) <= 8 else f"[{', '.join(map(repr, values[:8]))}, ...] ({len(values)} seeds)"


@dataclass(frozen=True)
class JobRequest:
    """Methods (names or wildcards) × archs × attributes (None: every attribute of the dataset) × seeds, under a
    protocol, a selection rule (None: the protocol's), a dataset (None: the default one) and `--set` overrides.
    `source` names where it came from (a study) in error messages."""

    methods: tuple[str, ...]
    archs: tuple[str, ...] = (DEFAULT_ARCH,)
    attributes: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    protocol: str = DEFAULT_PROTOCOL
    select: str | None = None
    dataset: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def fail(self, message: str) -> RequestError:
        return RequestError(f"{self.source}: {message}" if self.source else message)

    @property
    def dataset_class(self) -> Any:
        """The registered dataset (needs plugins loaded)."""
        from fairbench.registry import UnknownNameError, get_dataset

        try:
            return get_dataset(self.dataset)
        except UnknownNameError as exc:
            raise self.fail(str(exc)) from None

    @property
    def selection_rule(self) -> str:
        """`select`, else the protocol's rule, else the trainer's default."""
        from fairbench.registry import UnknownNameError
        from fairbench.selection import DEFAULT_RULE

        if self.select:
            return self.select
        try:
            from fairbench.protocols import get_protocol

            return get_protocol(self.protocol).train.get("select", DEFAULT_RULE)
        except UnknownNameError:
            return DEFAULT_RULE

    def check(self) -> None:
        """Every name and bound, before anything is expanded: protocol, selection rule, attributes, archs, seeds."""
        from fairbench.models.archs import ArchError, get_arch
        from fairbench.protocols import get_protocol
        from fairbench.registry import InvalidNameError, UnknownNameError
        from fairbench.selection import get_select_rule

        try:
            get_protocol(self.protocol)
            if self.select is not None:
                get_select_rule(self.select)
            for arch in self.archs:
                get_arch(arch)
        except (UnknownNameError, InvalidNameError, ArchError) as exc:
            raise self.fail(str(exc)) from None
        spec = self.dataset_class
        unknown = [a for a in self.attributes or () if a not in spec.attributes]
        if unknown:
            raise self.fail(f"unknown attribute {unknown[0]!r} for dataset {spec.name!r}; use one or more of "
                            f"{', '.join(spec.attributes)}")
        try:
            check_seeds(self.seeds)
        except RequestError as exc:
            raise self.fail(str(exc)) from None

    def jobs(self) -> list:
        """The jobs (fairbench.runs.jobs.Job): methods expanded, attribute-free methods once per arch and seed."""
        from fairbench.method import SettingsError
        from fairbench.registry import UnknownNameError, expand_methods
        from fairbench.runs.jobs import expand_jobs

        self.check()
        try:
            methods = expand_methods(list(self.methods))
            archs = [canonical_arch(a) for a in self.archs]
            return expand_jobs(methods, archs, list(self.attributes) if self.attributes else None,
                               list(self.seeds), dataset=self.dataset_class.name)
        except (UnknownNameError, SettingsError) as exc:
            raise self.fail(str(exc)) from None

    def options(self, out: Path, **run_options: Any):
        """The fairbench.runs.jobs.RunOptions of this request; `run_options` adds data=, epochs=, pretrained=, ..."""
        from fairbench.runs.jobs import RunOptions

        return RunOptions(out=Path(out), dataset=self.dataset_class.name, protocol=self.protocol, select=self.select,
                          overrides=dict(self.overrides), **run_options)

    def plan(self, out: Path, **run_options: Any) -> list:
        """The planned jobs (settings resolved, run folders named), or one RequestError line before anything runs."""
        from fairbench.datasets import DatasetError
        from fairbench.method import SettingsError
        from fairbench.registry import InvalidNameError, UnknownNameError
        from fairbench.runs.jobs import plan

        jobs = self.jobs()
        try:
            return plan(self.options(out, **run_options), jobs)
        except (SettingsError, DatasetError, UnknownNameError, InvalidNameError) as exc:
            raise self.fail(str(exc)) from None


def canonical_arch(name: str) -> str:
    """A `local-dir:` arch by its absolute folder (so every process and every later command names the same run
    folders); any other arch name as given."""
    from fairbench.models.archs import MODEL_SCHEMAS, get_arch

    return get_arch(name).name if name.startswith(MODEL_SCHEMAS) else name


def request_from_options(*, methods: Iterable[str], archs: Iterable[str] | None = None,
                         attributes: Iterable[str] | None = None, seeds: int | None = None,
                         protocol: str | None = None, select: str | None = None, dataset: str | None = None,
                         overrides: Mapping[str, str] | None = None) -> JobRequest:
    """A request from command-line values (None: each option's default); the seed count is bounded first."""
    return JobRequest(methods=tuple(methods), archs=tuple(archs or (DEFAULT_ARCH,)),
                      attributes=tuple(attributes) if attributes else None,
                      seeds=seed_range(DEFAULT_SEEDS if seeds is None else seeds),
                      protocol=protocol or DEFAULT_PROTOCOL, select=select, dataset=dataset,
                      overrides=dict(overrides or {}))
