"""Packaging: the declared dependencies are exactly what the code imports, the hand-kept package list is
complete, and a non-editable install works away from the repository (published tables from package data,
built-in methods under their installed name `fairbench_methods`)."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import fairbench
from fairbench.cli import app
from fairbench.registry import BUILTIN_PACKAGE
from tests.helpers import write_run

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]

# Distribution name (normalised) → the top-level module it installs, where the two differ.
IMPORT_NAMES = {"open-clip-torch": "open_clip", "scikit-learn": "sklearn", "pillow": "PIL", "pot": "ot",
                "pyyaml": "yaml", "pytest-xdist": "xdist"}
FIRST_PARTY = {"fairbench", BUILTIN_PACKAGE, "tests", "bench"}
TOOLS = {"ruff", "xdist"}  # test-extra tools run as commands or pytest plugins (`-n 2`), never imported


def import_name(requirement: str) -> str:
    dist = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
    dist = re.sub(r"[-_.]+", "-", dist).lower()
    return IMPORT_NAMES.get(dist, dist.replace("-", "_"))


class _Imports(ast.NodeVisitor):
    """Top-level names imported; those under `try: ... except ImportError` (or importorskip) are optional."""

    def __init__(self) -> None:
        self.required: set[str] = set()
        self.optional: set[str] = set()
        self._guarded = 0

    def _add(self, name: str) -> None:
        (self.optional if self._guarded else self.required).add(name.split(".")[0])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self._add(node.module)

    def visit_Try(self, node: ast.Try) -> None:
        guards = any(name in {"ImportError", "ModuleNotFoundError"}
                     for h in node.handlers if h.type is not None
                     for name in ([n.id for n in ast.walk(h.type) if isinstance(n, ast.Name)]))
        self._guarded += guards
        for stmt in node.body:
            self.visit(stmt)
        self._guarded -= guards
        for stmt in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(stmt)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "importorskip" and node.args
                and isinstance(node.args[0], ast.Constant)):
            self.optional.add(str(node.args[0].value).split(".")[0])
        self.generic_visit(node)


def third_party_imports(*folders: str) -> tuple[set[str], set[str]]:
    """(required, optional-only) third-party top-level imports of every .py file under `folders`."""
    found = _Imports()
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.visit(ast.parse(path.read_text(), filename=str(path)))
    keep = {n for n in found.required | found.optional if n not in sys.stdlib_module_names and n not in FIRST_PARTY}
    return found.required & keep, (found.optional - found.required) & keep


def extra_imports(*, test: bool) -> set[str]:
    extras = PROJECT["optional-dependencies"]
    return {import_name(r) for name, reqs in extras.items() if (name == "test") == test for r in reqs}


def test_runtime_dependencies_are_exactly_the_package_imports():
    required, optional = third_party_imports("fairbench", "methods")
    declared = {import_name(r) for r in PROJECT["dependencies"]}
    assert declared == required, (f"declared but not imported: {sorted(declared - required)}; "
                                  f"imported but not declared: {sorted(required - declared)}")
    # An import that may fail (guarded by `except ImportError`) belongs to an extra, e.g. parquet → pyarrow.
    assert extra_imports(test=False) == optional


def test_test_extra_is_what_tests_and_benchmarks_import():
    required, optional = third_party_imports("tests", "bench", "scripts")
    runtime = {import_name(r) for r in PROJECT["dependencies"]}
    test_extra = extra_imports(test=True) - TOOLS
    assert (required | optional) - runtime <= test_extra, "a test imports something no extra declares"
    # Tests exercise the optional features too, so the test extra holds every other extra; beyond those,
    # it holds only what tests and benchmarks import.
    assert extra_imports(test=False) <= test_extra
    assert test_extra - extra_imports(test=False) <= (required | optional) - runtime


def test_nothing_imports_the_global_name_methods():
    finder = _Imports()
    for folder in ("fairbench", "methods", "tests", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            finder.visit(ast.parse(path.read_text(), filename=str(path)))
    assert "methods" not in finder.required | finder.optional


def test_package_list_names_every_source_package():
    """Packages are listed by hand (they are renamed on install); none may be left out of the wheel."""
    dirs = SETUPTOOLS["package-dir"]
    assert dirs[BUILTIN_PACKAGE] == "methods" and dirs["fairbench.reference"] == "results/paper"
    assert dirs["fairbench.studies"] == "studies"
    expected = {"fairbench.reference", "fairbench.studies"}  # data only: results/paper/ and studies/, shipped inside
    for folder, installed in (("fairbench", "fairbench"), ("methods", BUILTIN_PACKAGE)):
        for init in (ROOT / folder).rglob("__init__.py"):
            expected.add(".".join((installed, *init.parent.relative_to(ROOT / folder).parts)))
    listed = set(SETUPTOOLS["packages"])
    assert listed == expected, (f"add to [tool.setuptools] packages: {sorted(expected - listed)}; "
                                f"remove: {sorted(listed - expected)}")
    assert SETUPTOOLS["package-data"]["fairbench.reference"] == ["*.csv", "*.md"]
    assert SETUPTOOLS["package-data"]["fairbench.studies"] == ["*.toml"]


def test_version_has_one_source():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert SETUPTOOLS["dynamic"]["version"] == {"attr": "fairbench.__version__"}
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"fairbench {fairbench.__version__}"


_PROBE = """
import json
from importlib.metadata import distribution
from fairbench.registry import BUILTIN_PACKAGE, list_methods, load_builtin_methods, get_method
from fairbench.report.paper import find_paper_csv
from fairbench.study import load_study, shipped_studies
import fairbench, importlib
load_builtin_methods()
dist = distribution("fairbench-medvlm")
builtins = [n for n in list_methods() if get_method(n).__module__.startswith(BUILTIN_PACKAGE)]
study = load_study("fair-moe-paper")
print(json.dumps({"csv": str(find_paper_csv()), "fairbench": fairbench.__file__, "version": dist.version,
                  "study": study.source, "study_methods": len(study.methods), "studies": sorted(shipped_studies()),
                  "builtins": importlib.import_module(BUILTIN_PACKAGE).__file__, "methods": builtins,
                  "top_level": sorted({f.parts[0] for f in dist.files
                                       if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")})}))
"""


@pytest.mark.install
@pytest.mark.slow
def test_non_editable_install_compares_with_paper_outside_the_repo(tmp_path):
    """`pip install .` (no editable link) ships the paper's tables and the built-ins under unique names."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("fairbench", "methods", "results/paper", "studies"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                              "--no-build-isolation", "--no-index", str(src)],
                             capture_output=True, text=True, env=env, timeout=60)
    assert install.returncode == 0, install.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"  # no results/paper/ here or above: only the package data can answer
    results = elsewhere / "runs"
    for seed in range(2):
        write_run(results, "clip", "b16", None, seed, strength=0.8)
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, env=env, cwd=elsewhere,
                           timeout=60)
    assert probe.returncode == 0, probe.stderr[-2000:]
    info = json.loads(probe.stdout)
    site = Path(info["fairbench"]).parent.parent
    assert site.is_relative_to(env_dir)
    assert Path(info["csv"]) == site / "fairbench" / "reference" / "fair-moe-tables.csv"
    assert Path(info["builtins"]) == site / BUILTIN_PACKAGE / "__init__.py"
    # `--study fair-moe-paper` works from the installed package: the study ships as package data.
    assert Path(info["study"]) == site / "fairbench" / "studies" / "fair-moe-paper.toml"
    assert info["studies"] == sorted(p.stem for p in (ROOT / "studies").glob("*.toml")) and info["study_methods"] == 13
    assert info["top_level"] == ["fairbench", BUILTIN_PACKAGE]  # no global `methods`
    assert info["version"] == fairbench.__version__
    from fairbench.registry import get_method, list_methods, load_builtin_methods

    load_builtin_methods()
    here = [n for n in list_methods() if get_method(n).__module__.startswith(BUILTIN_PACKAGE)]
    assert info["methods"] == here and here  # every built-in module made it into the wheel

    table = subprocess.run([str(env_dir / "bin" / "fairbench"), "table", "--out", str(results), "--compare",
                            "paper", "--format", "markdown", "--attr", "race"],
                           capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60)
    assert table.returncode == 0, table.stderr[-2000:]
    paper = pd.read_csv(ROOT / "results" / "paper" / "fair-moe-tables.csv")
    pub = paper[(paper.table == 1) & (paper.attribute == "race") & (paper.method == "clip") & (paper.arch == "b16")
                & (paper.metric == "ES-AUC")].iloc[0]
    assert f"{pub['mean']:.2f} ± {pub['std']:.2f}" in table.stdout


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "preds.parquet"
    pd.DataFrame({"label": [0, 1], "score": [0.2, 0.9], "race": [0, 1]}).to_parquet(path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails as if not installed
    result = CliRunner().invoke(app, ["metrics", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {path}: reading Parquet needs pyarrow; "
                                     "pip install 'fairbench-medvlm[parquet]'")
