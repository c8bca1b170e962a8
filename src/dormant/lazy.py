"""Names a package loads from its submodules on first use (PEP 562), so that reading settings
and registries (the command line's help, ``dormant methods``) imports no torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def names(package: str, where: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose name ``n`` lives in its submodule
    ``where[n]``. A package also lists them under ``TYPE_CHECKING`` imports, which type
    checkers and a method's code revision (``unlearn.base.method_modules``) follow."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
