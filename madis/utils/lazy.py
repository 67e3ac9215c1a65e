"""Package exports imported on first use (PEP 562 module ``__getattr__``).

The ``madis`` command imports every group's ``cli`` module to build its parser, and importing a
submodule runs its package's ``__init__`` first: a package that re-exports its models eagerly
would make ``madis --help`` load torch and transformers (seconds). Such a package declares its
exports here instead::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"model": ("MaDiSModel",), ...})
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose names live in its submodules.

    Args:
        package: the package's ``__name__``.
        exports: ``{submodule: names}``, e.g. ``{"dtw": ("dtw_jpe",)}`` for ``package.dtw``.
    Returns:
        A ``__getattr__`` that imports ``package.<submodule>`` when one of its names is first
        read (then caches the value in the package) and raises ``AttributeError`` for other
        names; a ``__dir__``; the sorted ``__all__``.
    Raises:
        ValueError: a name is listed under two submodules.
    """
    module_of: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in module_of:
                raise ValueError(f"{package}: {name!r} exported by both {module_of[name]!r} "
                                 f"and {module!r}")
            module_of[name] = module
    names = sorted(module_of)

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return list(names)

    return __getattr__, __dir__, names
