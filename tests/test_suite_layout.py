"""The suite's own rules: helpers shared between test modules live in tests/helpers.py (or conftest.py), so no test
module imports another (importing one runs its module-level set-up and ties the two files' edits together)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(path: Path) -> list[str]:
    """The test modules (`test_*`) that the file at `path` imports, absolute or relative."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if _is_test_module(alias.name))
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if _is_test_module(module):
                found.add(module)
            else:  # `from tests import test_x`
                found.update(f"{module}.{alias.name}".replace("..", ".") for alias in node.names
                             if _is_test_module(alias.name))
    return sorted(found)


def _is_test_module(dotted: str) -> bool:
    return any(part.startswith("test_") for part in dotted.split("."))


def test_no_test_module_imports_another():
    offenders = {p.name: imported_test_modules(p) for p in sorted(TESTS.rglob("*.py"))}
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"move what they share into tests/helpers.py: {offenders}"


def test_the_check_sees_every_form_of_import(tmp_path):
    source = tmp_path / "test_x.py"
    source.write_text("import tests.test_a\nfrom tests.test_b import f\nfrom .test_c import g\n"
                      "from tests import test_d, helpers\nfrom tests.helpers import write_run\nimport pytest\n")
    assert imported_test_modules(source) == [".test_c", "tests.test_a", "tests.test_b", "tests.test_d"]
