"""Unlearning methods: one module per method over ``base.UnlearnMethod``, one registry.

``get_method("npo", {"beta": 0.2})`` validates the params against the method's pydantic ``Params``
model and returns the method; a bad name or value raises ``ConfigError`` naming the field and its
valid range (``method.params.beta: Input should be greater than 0 (valid: > 0, <= 10)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from unlearn_core.config import ConfigError
from unlearn_core.method_registry import METHOD_CLASSES, method_key
from unlearn_core.methods.base import ShardView, UnlearnMethod, model_inputs


def _load(name: str, path: str) -> type[UnlearnMethod]:
    module, cls_name = path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if cls.name != name:
        raise ValueError(f"{path} is registered as {name!r} but its name is {cls.name!r}")
    return cls


METHODS: dict[str, type[UnlearnMethod]] = {name: _load(name, path) for name, path in METHOD_CLASSES.items()}


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


_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def field_range(params_cls: type[BaseModel], name: str) -> str:
    """Human-readable constraints of one Params field, e.g. ``> 0, <= 10`` (empty if none)."""
    info = params_cls.model_fields.get(name)
    if info is None:
        return ""
    parts = []
    for meta in info.metadata:
        for attr, sym in _BOUND_TEXT.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
    return ", ".join(parts)


def validate_params(method: str, params_cls: type[BaseModel], params: Mapping[str, Any]) -> BaseModel:
    try:
        return params_cls.model_validate(dict(params))
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            fname = str(e["loc"][0]) if e["loc"] else ""
            loc = ".".join(["method.params", *(str(x) for x in e["loc"])])
            msg = f"{loc}: {e['msg']}"
            if e["type"] == "extra_forbidden":
                msg += f" (valid fields of {method!r}: {', '.join(params_cls.model_fields) or 'none'})"
            elif rng := field_range(params_cls, fname):
                msg += f" (valid: {rng})"
            msgs.append(msg)
        raise ConfigError(f"invalid params for method {method!r}: " + "; ".join(msgs)) from None


def get_method(name: str, params: Mapping[str, Any] | None = None) -> UnlearnMethod:
    """Build a registered method from its name and a params dict (validated)."""
    key = method_key(name)
    cls = METHODS[key]
    return cls(validate_params(key, cls.Params, params or {}))


__all__ = [
    "METHODS", "ShardView", "UnlearnMethod", "field_range", "get_method", "model_inputs", "shard_views",
    "validate_params",
]  # fmt: skip
