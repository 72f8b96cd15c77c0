"""Built-in methods. Every module here registers its methods through `fairbench.register_method`, exactly
as a user's plugin file does; importing this package imports them all."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_info.name}")
