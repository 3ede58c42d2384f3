"""Built-in compression methods. Every module in this package registers itself on import,
so adding a method is adding a file here: nothing else changes."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
