"""The datasets that ship with fairbench: every package under fairbench/datasets/ is one, and importing
it registers it through `fairbench.register_dataset`, exactly as a user's plugin does."""

import importlib
import pkgutil
from pathlib import Path

for _info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
    if _info.ispkg:
        importlib.import_module(f"fairbench.datasets.{_info.name}")
