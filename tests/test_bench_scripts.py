"""The benchmark scripts import fairbench lazily inside `main()`, so a moved module breaks them only when someone
runs them (bench_resume.py did, after the dataset layer moved). Resolve every fairbench import they make."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
OURS = ("fairbench", "fairbench_methods")


def fairbench_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS
            for alias in node.names]


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_fairbench_import_of_a_bench_script_resolves(script: Path) -> None:
    for module, name in fairbench_imports(script):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")  # a submodule; raises if it does not exist either


def test_the_check_sees_a_broken_import(tmp_path: Path) -> None:
    script = tmp_path / "bench_old.py"
    script.write_text("def main():\n    from fairbench.data import make_synthetic\n")
    (module, name), = fairbench_imports(script)
    with pytest.raises(ImportError):
        importlib.import_module(module)
