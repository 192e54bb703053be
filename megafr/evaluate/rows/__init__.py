"""The table rows: each module here registers its builder with :func:`megafr.evaluate.registry.register_method`.

Every module of this package is imported here, so adding a baseline is adding a module.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
