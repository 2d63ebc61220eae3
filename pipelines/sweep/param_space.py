"""A validated ``SearchSpace`` (unlearn_core.search_space) as a Ray Tune ``param_space``.

The param space is flat and keyed by the dotted config keys themselves (``train.lr``,
``method.params.w_bg``): Tune accepts dots in keys (it nests only on dicts and joins nested paths with
``/``, so a dotted key stays one parameter; results show it as ``config/train.lr``), and so does
``OptunaSearch`` (Optuna parameter names are free strings). No key mangling or mapping back is needed:
a trial's ``config`` goes straight to ``trial_overrides(space, config)``.

Values: ``choice`` values pass through unchanged; YAML ``none`` is the string "none" (pubg's
``mask``), ``null`` is None (pubg's ``top_k``); Optuna's categorical distribution accepts such mixed
None/int/str choices. Optuna cannot search ``grid`` dims: pass ``grid_as_choice=True`` for a search
algorithm, which samples them like ``choice``.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from unlearn_core.search_space import SearchSpace


def has_grid(space: SearchSpace) -> bool:
    """True if some dim is a ``grid`` (Tune repeats ``num_samples`` per grid point)."""
    return any(dim.kind == "grid" for dim in space.dims.values())


def tune_param_space(space: SearchSpace, *, grid_as_choice: bool = False) -> dict[str, Any]:
    """Flat ``param_space``: dotted key -> ``tune.uniform|loguniform|randint|choice|grid_search``.

    ``randint`` keeps the exclusive upper bound (same as ``tune.randint``). ``base`` is not included:
    ``trial_overrides`` adds it to each trial.
    """
    out: dict[str, Any] = {}
    for key, dim in space.dims.items():
        values = list(dim.args)
        if dim.kind == "uniform":
            out[key] = tune.uniform(*values)
        elif dim.kind == "loguniform":
            out[key] = tune.loguniform(*values)
        elif dim.kind == "randint":
            out[key] = tune.randint(*values)
        elif dim.kind == "choice" or (dim.kind == "grid" and grid_as_choice):
            out[key] = tune.choice(values)
        elif dim.kind == "grid":
            out[key] = tune.grid_search(values)
        else:  # pragma: no cover - load_space rejects other kinds
            raise ValueError(f"{space.source}: space.{key}: unknown distribution {dim.kind!r}")
    return out


__all__ = ["has_grid", "tune_param_space"]
