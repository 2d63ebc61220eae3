"""Package names that load on first use (PEP 562), for packages that Ray processes import only to
unpickle one light class (the Train controller and our callbacks): eager ``__init__`` imports would
load torch and transformers there and add seconds to every job's start."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, homes: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``homes[name]`` (a module path) when first
    asked for, and keeps it in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        namespace[name] = value
        return value

    return __getattr__
