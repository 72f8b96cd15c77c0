"""The registries of methods and datasets: one public path for built-ins and users' plugins alike.

Built-in methods in `methods/`, the built-in datasets in `fairbench.datasets` and a user's own file register
through `register_method` / `register_dataset`, so the core never names a method or a dataset. Plugins (which
may register either) are found through `--plugin` (a file path or a module name), the `FAIRBENCH_PLUGINS`
environment variable (os.pathsep-separated) and the `fairbench.methods` / `fairbench.datasets` entry-point
groups of installed packages.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from fairbench.datasets.base import Dataset
    from fairbench.method import Method

ENTRY_POINT_GROUP = "fairbench.methods"
DATASET_ENTRY_POINT_GROUP = "fairbench.datasets"
PLUGIN_ENV = "FAIRBENCH_PLUGINS"
# The repository's `methods/` folder, installed under this unique name (pyproject's package-dir).
BUILTIN_PACKAGE = "fairbench_methods"
BUILTIN_DATASETS = "fairbench.datasets.builtin"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")
M = TypeVar("M", bound="type[Method]")
D = TypeVar("D", bound="type[Dataset]")


class UnknownNameError(KeyError):
    """Raised for a name (or pattern) that matches nothing registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownMethodError(UnknownNameError):
    """Raised for a method name (or pattern) that matches nothing registered."""


class UnknownDatasetError(UnknownNameError):
    """Raised for a dataset name that matches nothing registered."""


class PluginError(ImportError):
    """Raised when a plugin file or module cannot be imported."""


class Registry(Generic[T]):
    """Named classes of one kind (methods or datasets), with aliases, wildcards and did-you-mean errors."""

    def __init__(self, kind: str, base: str, error: type[UnknownNameError], listing: str) -> None:
        self.kind, self.base, self.error, self.listing = kind, base, error, listing
        self.entries: dict[str, T] = {}

    def register(self, name: str, description: str, aliases: tuple[str, ...]) -> Callable[[T], T]:
        def decorate(cls: T) -> T:
            module_name, _, class_name = self.base.rpartition(".")
            base = getattr(importlib.import_module(module_name), class_name)
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"@register_{self.kind}({name!r}) must decorate a subclass of {self.base}")
            cls.name = name
            cls.description = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
            for key in (name, *aliases):
                existing = self.entries.get(key)
                if existing is not None and existing.__qualname__ != cls.__qualname__:
                    raise ValueError(f"{self.kind} name {key!r} is already registered by {existing.__module__}")
                self.entries[key] = cls
            cls.aliases = tuple(aliases)
            return cls

        return decorate

    def get(self, name: str) -> T:
        try:
            return self.entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise self.error(f"unknown {self.kind} {name!r}.{hint} {self.listing}") from None

    def names(self, pattern: str = "*", include_aliases: bool = False) -> list[str]:
        names = [n for n, cls in self.entries.items() if include_aliases or n == cls.name]
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


_METHODS: Registry[type[Method]] = Registry(
    "method", "fairbench.method.Method", UnknownMethodError,
    "Run `fairbench methods` to list them, or load your own with --plugin FILE.py.")
_DATASETS: Registry[type[Dataset]] = Registry(
    "dataset", "fairbench.datasets.base.Dataset", UnknownDatasetError,
    "Run `fairbench data list` to list them, or load your own with --plugin FILE.py.")
_REGISTRY = _METHODS.entries  # v0.1 name of the method table
_loaded_sources: set[str] = set()
_default_dataset: list[type[Dataset]] = []  # at most one: the dataset used when --dataset is not given


def register_method(name: str, *, description: str = "", aliases: tuple[str, ...] = ()) -> Callable[[M], M]:
    """Class decorator that makes a `Method` subclass available under `name` (and its aliases)."""
    return _METHODS.register(name, description, aliases)


def register_dataset(name: str, *, description: str = "", aliases: tuple[str, ...] = (),
                     default: bool = False) -> Callable[[D], D]:
    """Class decorator that makes a `fairbench.datasets.Dataset` subclass available under `name`.

    Its results tags (`tag`, default `name`, and `synthetic_tag`) must be its own: they name results folders.
    `default=True` makes it the dataset commands use without --dataset (one dataset may be the default).
    """
    register = _DATASETS.register(name, description, aliases)

    def decorate(cls: D) -> D:
        cls = register(cls)
        cls.tag = cls.tag or name
        try:
            _check_tags(cls)
            if default:
                _set_default(cls)
        except ValueError:
            for key in (name, *aliases):
                if _DATASETS.entries.get(key) is cls:
                    del _DATASETS.entries[key]
            raise
        return cls

    return decorate


def _same(a: type, b: type) -> bool:
    return a.__qualname__ == b.__qualname__ and a.name == b.name  # a plugin file imported twice is no clash


def _check_tags(cls: type[Dataset]) -> None:
    tags = {t for t in (cls.tag, cls.synthetic_tag) if t}
    for other in {id(c): c for c in _DATASETS.entries.values()}.values():
        clash = tags & {other.tag, other.synthetic_tag} if not _same(other, cls) else set()
        if clash:
            raise ValueError(f"dataset {cls.name!r}: results tag {sorted(clash)[0]!r} is already used by dataset "
                             f"{other.name!r}; give {cls.__qualname__} its own `tag` (and `synthetic_tag`)")


def _set_default(cls: type[Dataset]) -> None:
    if _default_dataset and not _same(_default_dataset[0], cls):
        raise ValueError(f"dataset {cls.name!r} cannot be the default: {_default_dataset[0].name!r} already is; "
                         "drop default=True and pass --dataset instead")
    _default_dataset[:] = [cls]


def load_builtin_methods() -> None:
    """Import the built-in methods package (`methods/` in the repository); its modules register themselves."""
    _import_once(f"module:{BUILTIN_PACKAGE}", _import_builtin_package)


def _import_builtin_package() -> None:
    """Built-ins always come from the same tree as the core.

    Installed, `methods/` is the package `fairbench_methods`. Run from a source checkout (PYTHONPATH, or an
    install of another checkout), that name may be missing or point elsewhere, so the checkout's own
    `methods/` is loaded under it.
    """
    init = _SOURCE_ROOT / "methods" / "__init__.py"
    if BUILTIN_PACKAGE in sys.modules or not (init.is_file() and (_SOURCE_ROOT / "pyproject.toml").is_file()):
        importlib.import_module(BUILTIN_PACKAGE)
        return
    spec = importlib.util.spec_from_file_location(BUILTIN_PACKAGE, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[BUILTIN_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(BUILTIN_PACKAGE, None)
        raise


def load_builtin_datasets() -> None:
    """Import the built-in datasets; they register themselves like a plugin's."""
    _import_once(f"module:{BUILTIN_DATASETS}", lambda: importlib.import_module(BUILTIN_DATASETS))


def load_plugin(spec: str) -> None:
    """Import a plugin given as a path to a .py file or as an importable module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist; pass a path to a .py file or a module name")
        resolved = str(path.resolve())

        def load_file() -> None:
            mod_name = f"fairbench_plugin_{abs(hash(resolved)):x}"
            spec_obj = importlib.util.spec_from_file_location(mod_name, resolved)
            if spec_obj is None or spec_obj.loader is None:
                raise PluginError(f"cannot import plugin file {spec!r}")
            module = importlib.util.module_from_spec(spec_obj)
            sys.modules[mod_name] = module
            try:
                _guarded(f"plugin file {spec!r}", lambda: spec_obj.loader.exec_module(module))
            except PluginError:
                sys.modules.pop(mod_name, None)
                raise

        _import_once(f"file:{resolved}", load_file)
        return

    def load_module() -> None:
        try:
            _guarded(f"plugin module {spec!r}", lambda: importlib.import_module(spec))
        except PluginError as exc:
            if isinstance(exc.__cause__, ModuleNotFoundError) and exc.__cause__.name == spec.split(".")[0]:
                raise PluginError(f"plugin module {spec!r} could not be imported ({exc.__cause__}); "
                                  "pass a path to a .py file or an importable module name") from exc.__cause__
            raise

    _import_once(f"module:{spec}", load_module)


def _guarded(what: str, run: Callable[[], object]) -> None:
    """Import a plugin; whatever it raises (or a `sys.exit` it calls) becomes a PluginError naming it, so a broken
    plugin can never end a command silently (exit 0, no output) or with a traceback. Only a stop (Ctrl-C, a
    signal) passes through."""
    try:
        run()
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        raise PluginError(f"{what} called sys.exit({exc.code!r}) while being imported; a plugin must only define and "
                          "register its classes") from exc
    except Exception as exc:  # a user's code: report which plugin broke and how
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PluginError(f"{what} failed to import: {type(exc).__name__}: {first}") from exc


def load_plugins(specs: list[str] | tuple[str, ...] = (), *, methods: bool = True) -> None:
    """Load built-ins, then entry points, then `FAIRBENCH_PLUGINS`, then explicit `specs`.

    `methods=False` skips the built-in methods and the methods entry points (they import torch), for commands
    that only need datasets; plugin files and modules are imported either way."""
    if methods:
        load_builtin_methods()
    load_builtin_datasets()
    for group in (ENTRY_POINT_GROUP, DATASET_ENTRY_POINT_GROUP) if methods else (DATASET_ENTRY_POINT_GROUP,):
        for ep in entry_points(group=group):
            what = f"plugin {ep.value!r} (entry point {ep.name!r} of {group})"
            _import_once(f"entry:{ep.value}", lambda ep=ep, what=what: _guarded(what, ep.load))
    env = os.environ.get(PLUGIN_ENV, "")
    for spec in [s for s in env.split(os.pathsep) if s.strip()]:
        load_plugin(spec.strip())
    for spec in specs:
        load_plugin(spec)


def _import_once(key: str, loader: Callable[[], object]) -> None:
    if key in _loaded_sources:
        return
    loader()
    _loaded_sources.add(key)


def get_method(name: str) -> type[Method]:
    """Look a method up by exact name, suggesting close matches when there is none."""
    return _METHODS.get(name)


def list_methods(pattern: str = "*", *, include_aliases: bool = False) -> list[str]:
    """Registered method names matching a shell-style wildcard, sorted."""
    return _METHODS.names(pattern, include_aliases)


def get_dataset(name: str | None = None) -> type[Dataset]:
    """Look a dataset up by exact name, or the default one for None (built-ins load on first use)."""
    load_builtin_datasets()
    if name is None:
        if not _default_dataset:
            raise UnknownDatasetError(f"no default dataset is registered; pass --dataset NAME. {_DATASETS.listing}")
        return _default_dataset[0]
    return _DATASETS.get(name)


def default_dataset() -> str:
    """Name of the dataset commands use when --dataset is not given."""
    return get_dataset(None).name


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a shell-style wildcard, sorted."""
    load_builtin_datasets()
    return _DATASETS.names(pattern)


def dataset_for_tag(tag: str) -> type[Dataset] | None:
    """The registered dataset whose results carry `tag` (result files of v0.1 name only the tag), or None."""
    load_builtin_datasets()
    return next((c for c in _DATASETS.entries.values() if tag in (c.tag, c.synthetic_tag)), None)


def expand_methods(spec: str) -> list[str]:
    """Expand a comma list of names and wildcards into registered names, keeping order, no repeats."""
    out: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if any(ch in part for ch in "*?["):
            found = list_methods(part)
            if not found:
                raise UnknownMethodError(f"method pattern {part!r} matches no registered method; "
                                         "run `fairbench methods` to list them")
        else:
            found = [get_method(part).name]
        out.extend(n for n in found if n not in out)
    return out
