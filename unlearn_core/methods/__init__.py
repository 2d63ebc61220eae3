"""Unlearning methods: one module per method over ``base.UnlearnMethod``, one registry.

``get_method("npo", {"beta": 0.2})`` validates the params against the method's pydantic ``Params``
model and returns the method; a bad name or value raises ``ConfigError`` naming the field and its
valid range (``method.params.beta: Input should be greater than 0 (valid: > 0, <= 10)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from unlearn_core.method_params import field_range, validate_params
from unlearn_core.method_registry import REGISTRY, check_params, method_key
from unlearn_core.methods.base import ShardView, UnlearnMethod, model_inputs


def _load(name: str, path: str, params: type) -> type[UnlearnMethod]:
    module, cls_name = path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if cls.name != name:
        raise ValueError(f"{path} is registered as {name!r} but its name is {cls.name!r}")
    if cls.Params is not params:
        raise ValueError(
            f"{path} is registered with {params.__name__} but its Params is {cls.Params.__name__}"
        )
    return cls


METHODS: dict[str, type[UnlearnMethod]] = {name: _load(name, *entry) for name, entry in REGISTRY.items()}


def shard_views() -> tuple[ShardView, ...]:
    """The views every set of shards carries: those the registered methods declare, in registry order
    (one per prefix)."""
    seen: dict[str, ShardView] = {}
    for cls in METHODS.values():
        for view in cls.shard_views:
            other = seen.setdefault(view.prefix, view)
            if other.answers is not view.answers:
                raise ValueError(f"two methods declare the shard view {view.prefix!r} with different answers")
    return tuple(seen.values())


def get_method(name: str, params: Mapping[str, Any] | None = None) -> UnlearnMethod:
    """Build a registered method from its name and a params dict (validated)."""
    return METHODS[method_key(name)](check_params(name, dict(params or {})))


__all__ = [
    "METHODS", "ShardView", "UnlearnMethod", "field_range", "get_method", "model_inputs", "shard_views",
    "validate_params",
]  # fmt: skip
