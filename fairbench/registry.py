"""Every named kind of fairbench in one kind of registry: methods, datasets, metrics, launchers, table layouts,
archs, protocols and selection rules.

Built-ins and a user's plugin register through the same public functions (`register_method`,
`register_dataset`, `fairbench.metrics.register_metric`, `fairbench.launchers.register_launcher`,
`fairbench.report.layouts.register_layout`, `fairbench.models.register_arch`,
`fairbench.protocols.register_protocol`, `fairbench.selection.register_select_rule`), so the core never names a
method or a dataset. Each registry imports its kind's built-ins on first use, by module name, as it would a
plugin. Every registry gives the same did-you-mean error and the same listing (`fairbench list KIND`), and every
name is checked by one rule (`check_name`): method, dataset, arch and attribute names become folders under
`--out`, so a name can never leave it.

Plugins (which may register any kind) are found through `--plugin` (a file path or a module name; a dataset file
(.toml) or a folder of them registers those datasets), the
`FAIRBENCH_PLUGINS` environment variable (os.pathsep-separated) and the `fairbench.plugins`,
`fairbench.methods` and `fairbench.datasets` entry-point groups of installed packages.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from fairbench.datasets.base import Dataset
    from fairbench.method import Method

PLUGIN_ENTRY_POINT_GROUP = "fairbench.plugins"  # a plugin of any kind
ENTRY_POINT_GROUP = "fairbench.methods"
DATASET_ENTRY_POINT_GROUP = "fairbench.datasets"
PLUGIN_ENV = "FAIRBENCH_PLUGINS"
# The repository's `methods/` folder, installed under this unique name (pyproject's package-dir).
BUILTIN_PACKAGE = "fairbench_methods"
BUILTIN_DATASETS = "fairbench.datasets.builtin"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]

# The one rule for names: a name may become a folder under --out (method, dataset tag, arch, attribute), so it is
# one path part that cannot climb out ("..", "/"), hide (leading "."), or surprise a shell.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"

T = TypeVar("T")
M = TypeVar("M", bound="type[Method]")
D = TypeVar("D", bound="type[Dataset]")


class UnknownNameError(KeyError, ValueError):
    """Raised for a name (or pattern) that matches nothing registered (a ValueError too: a bad value)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownMethodError(UnknownNameError):
    """Raised for a method name (or pattern) that matches nothing registered."""


class UnknownDatasetError(UnknownNameError):
    """Raised for a dataset name that matches nothing registered."""


class InvalidNameError(ValueError):
    """A name that breaks the naming rule (`NAME_RULE`)."""


class PluginError(ImportError):
    """Raised when a plugin file or module cannot be imported."""


def check_name(kind: str, name: Any) -> str:
    """`name` if it follows the naming rule, else an InvalidNameError: ONE rule and ONE message for every name."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(f"{kind} name {name!r} is not a valid name: names become folder names under --out, "
                               f"so they must be {NAME_RULE}")
    return name


REGISTRIES: dict[str, Registry[Any]] = {}  # plural kind ("metrics") → its registry, for `fairbench list`


class Registry(Generic[T]):
    """Named entries of one kind, with aliases, wildcards, did-you-mean errors and lazily loaded built-ins.

    Entries are classes (methods, datasets, launchers: `register` decorates them) or objects with a `name` and a
    `description` (metrics, layouts, archs, protocols, selection rules: `add` takes them). `base` is the dotted
    name of the class every entry must be (a subclass of, for classes); `builtins` the module (or loader) that
    registers the built-ins, imported on first use.
    """

    def __init__(self, kind: str, base: str, *, listing: str = "", plural: str | None = None,
                 builtins: str | Callable[[], None] | None = None, classes: bool = False,
                 error: type[UnknownNameError] = UnknownNameError) -> None:
        self.kind, self.base, self.plural = kind, base, plural or f"{kind}s"
        self.listing, self.classes, self.error = listing, classes, error
        self._builtins = builtins
        self.entries: dict[str, T] = {}
        self._loaded = False
        REGISTRIES[self.plural] = self

    # ------------------------------------------------------------------ registering
    def add(self, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register `entry` under its `name` (and `aliases`); the same entry registered again is no clash."""
        self._check_type(entry)
        name = check_name(self.kind, getattr(entry, "name", None))
        for key in (name, *aliases):
            check_name(self.kind, key)
            existing = self.entries.get(key)
            if existing is not None and not _same(existing, entry):
                where = getattr(existing, "__module__", type(existing).__module__)
                raise ValueError(f"{self.kind} name {key!r} is already registered by {where}")
        for key in (name, *aliases):
            self.entries[key] = entry
        return entry

    def register(self, name: str, description: str = "", aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Class decorator: name the class, describe it (default: its docstring's first line) and add it."""
        def decorate(cls: T) -> T:
            self._check_type(cls)
            check_name(self.kind, name)
            cls.name = name
            cls.description = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
            cls.aliases = tuple(aliases)
            return self.add(cls, aliases)

        return decorate

    def remove(self, name: str) -> None:
        """Forget `name` and its aliases (tests and a plugin's own clean-up)."""
        entry = self.entries.get(name)
        for key in [k for k, v in self.entries.items() if v is entry]:
            del self.entries[key]

    def _check_type(self, entry: Any) -> None:
        module_name, _, class_name = self.base.rpartition(".")
        base = getattr(importlib.import_module(module_name), class_name)
        ok = isinstance(entry, type) and issubclass(entry, base) if self.classes else isinstance(entry, base)
        if not ok:
            what = f"a subclass of {self.base}" if self.classes else f"a {self.base}"
            raise TypeError(f"a {self.kind} must be {what}, got {entry!r}")

    # ------------------------------------------------------------------ looking up
    def load_builtins(self) -> None:
        """Import the built-ins once (they register themselves, like a plugin)."""
        if self._builtins is None or self._loaded:
            return
        self._loaded = True  # set first: the built-ins' own registrations call back here
        try:
            if callable(self._builtins):
                self._builtins()
            else:
                importlib.import_module(self._builtins)
        except BaseException:
            self._loaded = False
            raise

    def get(self, name: str) -> T:
        """The entry called `name`; a one-line error with close names and the listing otherwise."""
        self.load_builtins()
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise self.error(self.unknown(name)) from None

    def unknown(self, name: Any) -> str:
        close = difflib.get_close_matches(str(name), list(self.entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = self.listing or "Use one of {names} (`fairbench list " + self.plural + "` describes them)."
        return f"unknown {self.kind} {name!r}.{hint} {listing.replace('{names}', ', '.join(self.names()))}"

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        return name in self.entries

    def names(self, pattern: str = "*", include_aliases: bool = False) -> list[str]:
        """Registered names matching a shell-style wildcard: sorted for classes, in registration order otherwise."""
        self.load_builtins()
        names = [n for n, e in self.entries.items() if include_aliases or n == e.name]
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return sorted(names) if self.classes else names

    def values(self) -> Iterator[T]:
        """Each entry once, in registration order."""
        self.load_builtins()
        seen: set[int] = set()
        for entry in self.entries.values():
            if id(entry) not in seen:
                seen.add(id(entry))
                yield entry

    def describe(self) -> list[tuple[str, str]]:
        """(name, description) of every entry, for listings and --help."""
        return [(name, self.get(name).description) for name in self.names()]


def _same(a: Any, b: Any) -> bool:
    """The same registration met twice (a plugin file imported again) is no clash."""
    if isinstance(a, type) and isinstance(b, type):
        return a.__qualname__ == b.__qualname__ and getattr(a, "name", None) == getattr(b, "name", None)
    return a is b or a == b


def registry_of(kind: str) -> Registry[Any]:
    """The registry of a kind by its plural or singular name ("metrics", "metric", "select-rules", ...)."""
    for plural, registry in REGISTRIES.items():
        if kind in (plural, registry.kind, registry.kind.replace(" ", "-"), plural.rstrip("s")):
            return registry
    raise UnknownNameError(f"unknown kind {kind!r}. Use one of {', '.join(REGISTRIES)}.")


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


METHODS: Registry[type[Method]] = Registry(
    "method", "fairbench.method.Method", classes=True, error=UnknownMethodError, builtins=_import_builtin_package,
    listing="Run `fairbench methods` to list them, or load your own with --plugin FILE.py.")
DATASETS: Registry[type[Dataset]] = Registry(
    "dataset", "fairbench.datasets.base.Dataset", classes=True, error=UnknownDatasetError, builtins=BUILTIN_DATASETS,
    listing="Run `fairbench data list` to list them, or load your own with --plugin FILE.py.")
METRICS: Registry[Any] = Registry("metric", "fairbench.metrics.catalog.Metric", builtins="fairbench.metrics.catalog")
LAUNCHERS: Registry[Any] = Registry("launcher", "fairbench.launchers.base.Launcher", classes=True,
                                    builtins="fairbench.launchers")
LAYOUTS: Registry[Any] = Registry("layout", "fairbench.report.layouts.TableLayout",
                                  builtins="fairbench.report.layouts")
ARCHS: Registry[Any] = Registry("arch", "fairbench.models.archs.Arch", builtins="fairbench.models.archs",
                                listing="Use one of {names} or an open_clip model name (see open_clip.list_models()).")
PROTOCOLS: Registry[Any] = Registry("protocol", "fairbench.protocols.Protocol", builtins="fairbench.protocols")
SELECT_RULES: Registry[Any] = Registry("selection rule", "fairbench.selection.SelectRule", plural="select-rules",
                                       builtins="fairbench.selection")

_loaded_sources: set[str] = set()
_default_dataset: list[type[Dataset]] = []  # at most one: the dataset used when --dataset is not given


def register_method(name: str, *, description: str = "", aliases: tuple[str, ...] = ()) -> Callable[[M], M]:
    """Class decorator that makes a `Method` subclass available under `name` (and its aliases)."""
    return METHODS.register(name, description, aliases)


def register_dataset(name: str, *, description: str = "", aliases: tuple[str, ...] = (),
                     default: bool = False) -> Callable[[D], D]:
    """Class decorator that makes a `fairbench.datasets.Dataset` subclass available under `name`.

    Its results tags (`tag`, default `name`, and `synthetic_tag`) must be its own: they name results folders, as
    its attribute names name run folders, so all of them follow the naming rule. `default=True` makes it the
    dataset commands use without --dataset (one dataset may be the default).
    """
    register = DATASETS.register(name, description, aliases)

    def decorate(cls: D) -> D:
        cls.tag = cls.tag or name
        try:
            _check_dataset_names(cls)
            cls = register(cls)
            _check_tags(cls)
            if default:
                _set_default(cls)
        except ValueError:
            for key in (name, *aliases):
                if DATASETS.entries.get(key) is cls:
                    del DATASETS.entries[key]
            raise
        return cls

    return decorate


def _check_dataset_names(cls: type[Dataset]) -> None:
    for tag in (cls.tag, cls.synthetic_tag):
        if tag:
            check_name("dataset tag", tag)
    for attribute in cls.attributes:
        check_name("attribute", attribute)


def _check_tags(cls: type[Dataset]) -> None:
    tags = {t for t in (cls.tag, cls.synthetic_tag) if t}
    for other in {id(c): c for c in DATASETS.entries.values()}.values():
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
    METHODS.load_builtins()


def load_builtin_datasets() -> None:
    """Import the built-in datasets; they register themselves like a plugin's."""
    DATASETS.load_builtins()


DATASET_FILES = "fairbench.datasets.tablefile"  # reads dataset files (.toml); imported by name, like a plugin


def is_dataset_file(spec: str | None) -> bool:
    """Whether `spec` (a --dataset or --plugin value) names a dataset file rather than a registered name."""
    return bool(spec) and str(spec).endswith(".toml")


def load_dataset_file(spec: str) -> type[Dataset]:
    """Register the dataset file `spec` (once) and return its dataset; PluginError on a bad file."""
    try:
        return importlib.import_module(DATASET_FILES).register_dataset_file(spec)
    except ValueError as exc:  # DatasetError (a bad file) or a name clash
        raise PluginError(str(exc)) from None


def load_plugin(spec: str) -> None:
    """Import a plugin given as a path to a .py file or as an importable module name, or register a dataset file
    (.toml) or every dataset file in a folder."""
    path = Path(spec)
    if is_dataset_file(spec):
        load_dataset_file(spec)
        return
    if path.is_dir():
        try:
            importlib.import_module(DATASET_FILES).register_dataset_folder(path)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        return
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
    that only need datasets, metrics, layouts or launchers; plugin files and modules are imported either way."""
    if methods:
        load_builtin_methods()
    load_builtin_datasets()
    groups = (PLUGIN_ENTRY_POINT_GROUP, DATASET_ENTRY_POINT_GROUP) + ((ENTRY_POINT_GROUP,) if methods else ())
    for group in groups:
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
    return METHODS.get(name)


def list_methods(pattern: str = "*", *, include_aliases: bool = False) -> list[str]:
    """Registered method names matching a shell-style wildcard, sorted."""
    return METHODS.names(pattern, include_aliases)


def get_dataset(name: str | None = None) -> type[Dataset]:
    """Look a dataset up by exact name, or the default one for None (built-ins load on first use)."""
    load_builtin_datasets()
    if is_dataset_file(name):
        try:
            return load_dataset_file(str(name))
        except PluginError as exc:
            raise UnknownDatasetError(str(exc)) from None
    if name is None:
        if not _default_dataset:
            raise UnknownDatasetError(f"no default dataset is registered; pass --dataset NAME. {DATASETS.listing}")
        return _default_dataset[0]
    return DATASETS.get(name)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a shell-style wildcard, sorted."""
    return DATASETS.names(pattern)


def dataset_for_tag(tag: str) -> type[Dataset] | None:
    """The registered dataset whose results carry `tag` (result files of v0.1 name only the tag), or None."""
    load_builtin_datasets()
    return next((c for c in DATASETS.entries.values() if tag in (c.tag, c.synthetic_tag)), None)


def expand_methods(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand names and wildcards (a list, or one comma-separated string) into registered names, keeping order,
    no repeats."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in [p.strip() for p in parts if p.strip()]:
        if any(ch in part for ch in "*?["):
            found = list_methods(part)
            if not found:
                raise UnknownMethodError(f"method pattern {part!r} matches no registered method; "
                                         "run `fairbench methods` to list them")
        else:
            found = [get_method(part).name]
        out.extend(n for n in found if n not in out)
    return out
