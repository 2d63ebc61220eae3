"""Tune search spaces: one YAML file per method (``tune_spaces/<method>.yaml``), validated against the
one config schema (``unlearn_core.config``) and the method's ``Params`` model.

File format::

    method: pubg                 # a registered method name (unlearn_core.methods.METHODS)
    num_samples: 8               # optional (default 8): trials; with grid dims, samples per grid point
    search: optuna               # optional (default random): the search algorithm (--search overrides)
    grace_period: 40             # optional (default train.eval_every): ASHA stops no trial before this step
    base:                        # optional: fixed dotted overrides applied to every trial
      train.eval_every: 10
    space:                       # dotted config key -> exactly one distribution
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}    # float, log scale; 0 < low < high
      method.params.temperature: {uniform: [0.5, 2.0]}  # float in [low, high]
      train.warmup_steps: {randint: [0, 10]}       # int, low inclusive, high EXCLUSIVE (0..9)
      train.steps: {choice: [20, 40, 80]}          # one of the values, sampled
      method.params.mask: {grid: [none, vision]}   # every value (Tune grid_search)
    start:                       # optional: points tried first, in order (e.g. a hand-tuned setting)
      - {train.lr: 5.0e-4, train.steps: 20}        # keys are dims; a dim left out is sampled
    objective:                   # optional (default: DEFAULT_OBJECTIVE): what the sweep optimises
      metric: score              # the name the trial reports
      mode: min                  # min | max
      terms:                     # optional: metric = sum(weight * evaluator metric); else
        forget.leak_rate: 1.0    #   ``metric`` itself is an evaluator metric name
        retain.vqa_acc: -1.0
    # or, instead of metric/mode/terms, the default score plus terms of the space's own:
    # objective: {extra_terms: {audit_probe.auc_gap: 1.0}}

Keys are the dotted keys of ``flatten(RunConfig)`` (``train.lr``, ``model.lora_r``) or
``method.params.<field>`` for a field of the method's ``Params``. Every bound (uniform / loguniform:
low and high; randint: low and high - 1) and every choice / grid value is validated by building the
config and the method with it (on top of ``base``); a failure is a ``ConfigError`` naming the file and
the key. Continuous distributions on integer fields are errors. PyYAML reads ``1e-5`` (no dot) as a
string; numeric strings are converted to numbers here. Write ``null`` for None and ``none`` for the
string "none" (e.g. ``pubg``'s ``mask``). A sampled value never depends on another dimension.
"""

from __future__ import annotations

import math
import random
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from unlearn_core.bounded import load_yaml
from unlearn_core.config import ConfigError, MethodConfig, RunConfig, with_overrides
from unlearn_core.eval.metrics import METRIC_DEFINITIONS, higher_is_better
from unlearn_core.method_registry import METHOD_CLASSES, check_params, params_class

SPACES_DIR = Path(__file__).resolve().parents[1] / "tune_spaces"
RANGE_KINDS = ("uniform", "loguniform", "randint")
VALUE_KINDS = ("choice", "grid")
KINDS = RANGE_KINDS + VALUE_KINDS
TOP_LEVEL = ("method", "num_samples", "search", "grace_period", "base", "space", "start", "objective")
SEARCHES = ("random", "optuna")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Dim:
    """One dimension: ``kind`` in KINDS; ``args`` = (low, high) for range kinds, else the values."""

    kind: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str = "min"
    terms: dict[str, float] = field(default_factory=dict)


# What every method's sweep minimises unless its space file says otherwise, so that sweeps of
# different methods compare: leak less (seen and unseen images), no aftermaths, keep utility.
DEFAULT_OBJECTIVE = Objective(
    "score",
    "min",
    {
        "forget.leak_rate": 1.0,
        "forget_unseen.leak_rate": 1.0,
        "quality.hallucination": 0.5,
        "quality.degeneracy_rate": 0.5,
        "quality.refusal_rate": 0.25,
        "quality.informativeness": -0.5,
        "retain.vqa_acc": -1.0,
        "utility.caption_f1": -0.5,
    },
)


@dataclass(frozen=True)
class SearchSpace:
    method: str
    base: dict[str, Any]
    dims: dict[str, Dim]
    objective: Objective
    num_samples: int = 8
    source: str = "<space>"
    start: tuple[dict[str, Any], ...] = ()
    search: str | None = None  # the space's search algorithm (None: the CLI's default, random)
    grace_period: int | None = None  # ASHA's grace period in steps (None: train.eval_every)


def default_space_path(method: str) -> Path:
    """``tune_spaces/<method>.yaml`` of this checkout."""
    return SPACES_DIR / f"{method.strip().lower()}.yaml"


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate one YAML search space; errors are ``ConfigError`` naming the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    try:
        data = load_yaml(p.read_bytes(), str(p))
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return parse_space(data, source=str(path))


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate an already-parsed search space mapping (see the module docstring for the format)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    if unknown := sorted(set(data) - set(TOP_LEVEL)):
        raise ConfigError(f"{source}: unknown top-level keys {unknown}; valid: {', '.join(TOP_LEVEL)}")
    method = str(data.get("method", "")).strip().lower()
    if method not in METHOD_CLASSES:
        raise ConfigError(
            f"{source}: method: unknown method {method!r}; valid: {', '.join(sorted(METHOD_CLASSES))}"
        )
    num_samples = data.get("num_samples", 8)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"{source}: num_samples: must be an integer >= 1, got {num_samples!r}")
    search = data.get("search")
    if search is not None and search not in SEARCHES:
        raise ConfigError(f"{source}: search: must be one of {', '.join(SEARCHES)}, got {search!r}")
    grace = data.get("grace_period")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int) or grace < 1):
        raise ConfigError(f"{source}: grace_period: must be an integer >= 1 (steps), got {grace!r}")
    base = {str(k): _number(v) for k, v in _mapping(data.get("base"), f"{source}: base").items()}
    raw_space = data.get("space")
    if raw_space is None:
        raise ConfigError(f"{source}: space: missing (a mapping of dotted config key -> distribution)")
    for key in base:
        _resolve_field(method, key, f"{source}: base.{key}")
    _check_overrides(method, base, f"{source}: base")
    dims: dict[str, Dim] = {}
    for key, spec in _mapping(raw_space, f"{source}: space").items():
        where = f"{source}: space.{key}"
        if key in base:
            raise ConfigError(f"{where}: also set in base; keep it in one place")
        dims[str(key)] = _parse_dim(method, base, str(key), spec, where)
    start = _parse_start(method, base, dims, data.get("start"), f"{source}: start")
    if len(start) > num_samples:
        raise ConfigError(f"{source}: start: {len(start)} points but num_samples is {num_samples}")
    objective = _parse_objective(data.get("objective"), f"{source}: objective")
    return SearchSpace(method, base, dims, objective, num_samples, source, start, search, grace)


def sample(space: SearchSpace, rng: random.Random | None = None) -> dict[str, Any]:
    """One random point (pure Python; grid dims are sampled like choices): dotted key -> value."""
    rng = rng or random.Random()
    out: dict[str, Any] = {}
    for key, dim in space.dims.items():
        if dim.kind == "uniform":
            out[key] = rng.uniform(*dim.args)
        elif dim.kind == "loguniform":
            low, high = dim.args
            out[key] = math.exp(rng.uniform(math.log(low), math.log(high)))
        elif dim.kind == "randint":
            out[key] = rng.randrange(*dim.args)
        else:
            out[key] = rng.choice(dim.args)
    return out


def trial_overrides(space: SearchSpace, sampled: Mapping[str, Any]) -> dict[str, Any]:
    """``method.name`` + ``base`` + the sampled value of every dim (other keys of ``sampled``, e.g.
    constants a sweep adds to its Tune config, are ignored). A missing dim is a ConfigError."""
    if missing := [k for k in space.dims if k not in sampled]:
        raise ConfigError(f"{space.source}: trial config lacks the sampled keys {missing}")
    return {"method.name": space.method, **space.base, **{k: sampled[k] for k in space.dims}}


def trial_config(space: SearchSpace, sampled: Mapping[str, Any], cfg: RunConfig | None = None) -> RunConfig:
    """``cfg`` (default: the schema defaults) with the trial's overrides, the method params validated.
    Params of a different method in ``cfg`` are dropped."""
    cfg = cfg or RunConfig()
    if cfg.method.name != space.method:
        cfg = cfg.model_copy(update={"method": MethodConfig(name=space.method)})
    out = with_overrides(cfg, trial_overrides(space, sampled))
    check_params(out.method.name, out.method.params)
    return out


def objective_value(objective: Objective, metrics: Mapping[str, float]) -> float:
    """The value the sweep reports as ``objective.metric``: the metric itself, or the weighted sum of
    ``terms``. Terms the evaluator did not report (no samples) are skipped; none present is an error."""
    if not objective.terms:
        if objective.metric not in metrics:
            raise ConfigError(f"objective.metric: {objective.metric!r} not among the reported metrics")
        return float(metrics[objective.metric])
    present = {k: w for k, w in objective.terms.items() if k in metrics}
    if not present:
        raise ConfigError(f"objective.terms: none of {sorted(objective.terms)} among the reported metrics")
    return float(sum(w * float(metrics[k]) for k, w in present.items()))


# --------------------------------------------------------------------------- validation helpers


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _number(value: Any) -> Any:
    """PyYAML reads ``1e-5`` as a string: numeric strings become numbers; lists are converted per item."""
    if isinstance(value, list):
        return [_number(v) for v in value]
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return value


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _resolve_field(method: str, key: str, where: str) -> FieldInfo:
    """The schema field a dotted key names; unknown keys and sections are ConfigErrors."""
    parts = key.split(".")
    if parts[:2] == ["method", "name"]:
        raise ConfigError(f"{where}: set the top-level 'method:' instead")
    if parts[:2] == ["method", "params"]:
        fields = params_class(method).model_fields
        if len(parts) != 3 or parts[2] not in fields:
            valid = ", ".join(f"method.params.{f}" for f in fields) or "none"
            raise ConfigError(f"{where}: unknown field of method {method!r}; valid: {valid}")
        return fields[parts[2]]
    model: type[BaseModel] = RunConfig
    for i, part in enumerate(parts):
        fields = model.model_fields
        prefix = ".".join(parts[:i])
        if part not in fields:
            valid = ", ".join(f"{prefix}.{f}" if prefix else f for f in fields)
            raise ConfigError(f"{where}: unknown config field; valid here: {valid}")
        annotation = fields[part].annotation
        if i == len(parts) - 1:
            if _is_model(annotation):
                raise ConfigError(f"{where}: is a section; name one of its fields")
            return fields[part]
        if not _is_model(annotation):
            raise ConfigError(f"{where}: {part!r} is a value, not a section")
        model = annotation
    raise ConfigError(f"{where}: empty key")  # pragma: no cover - split() never returns []


def _is_int_field(info: FieldInfo) -> bool:
    annotation = info.annotation
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    kinds = [a for a in args if a is not type(None)]
    return bool(kinds) and all(a is int for a in kinds)


def _check_overrides(method: str, overrides: Mapping[str, Any], where: str) -> None:
    """Build the config and the method with ``overrides``; any failure is a ConfigError at ``where``."""
    try:
        cfg = with_overrides(RunConfig(method=MethodConfig(name=method)), dict(overrides))
        check_params(cfg.method.name, cfg.method.params)
    except (ConfigError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _parse_dim(method: str, base: dict[str, Any], key: str, spec: Any, where: str) -> Dim:
    info = _resolve_field(method, key, where)
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected one distribution such as {{loguniform: [low, high]}}, got {spec!r}"
        )
    ((kind, raw),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r}; valid: {', '.join(KINDS)}")
    args = _number(raw)
    if kind in VALUE_KINDS:
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {raw!r}")
        probes, what = list(args), "value"
    else:
        args = _range_args(kind, args, info, where)
        probes, what = [args[0], args[1] - 1 if kind == "randint" else args[1]], "bound"
    for value in probes:
        _check_overrides(method, {**base, key: value}, f"{where}: {what} {value!r} invalid")
    return Dim(kind, tuple(args))


def _range_args(kind: str, args: Any, info: FieldInfo, where: str) -> list[Any]:
    ok = isinstance(args, list) and len(args) == 2
    ok = ok and all(isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a) for a in args)
    if not ok:
        raise ConfigError(f"{where}: {kind} needs [low, high] (two finite numbers), got {args!r}")
    low, high = args
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low, got low={low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: randint needs integer bounds, got [{low}, {high}]")
    if kind != "randint" and _is_int_field(info):
        raise ConfigError(
            f"{where}: {kind} samples floats but the field is an integer; use randint or choice"
        )
    return [low, high]


def _parse_start(
    method: str, base: dict[str, Any], dims: dict[str, Dim], raw: Any, where: str
) -> tuple[dict[str, Any], ...]:
    """The ``start`` points: each a mapping of dims to values the dim can produce."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(
            f"{where}: must be a list of points (mappings of dim -> value), got {type(raw).__name__}"
        )
    if raw and any(d.kind == "grid" for d in dims.values()):
        raise ConfigError(f"{where}: not supported together with grid dims (Tune expands the grid itself)")
    points = []
    for i, point in enumerate(raw):
        here = f"{where}[{i}]"
        values = {k: _number(v) for k, v in _mapping(point, here).items()}
        for key, value in values.items():
            if key not in dims:
                raise ConfigError(f"{here}.{key}: not a dim of space; valid: {', '.join(dims)}")
            _check_in_dim(dims[key], value, f"{here}.{key}")
        _check_overrides(method, {**base, **values}, here)
        points.append(values)
    return tuple(points)


def _check_in_dim(dim: Dim, value: Any, where: str) -> None:
    """A start value must be one the dim could sample (Optuna refuses anything else)."""
    if dim.kind in VALUE_KINDS:
        if value not in dim.args:
            raise ConfigError(f"{where}: {value!r} is not one of the {dim.kind} values {list(dim.args)}")
        return
    low, high = dim.args
    number = isinstance(value, int | float) and not isinstance(value, bool)
    inside = number and (low <= value < high if dim.kind == "randint" else low <= value <= high)
    if dim.kind == "randint" and not isinstance(value, int):
        inside = False
    if not inside:
        closing = ")" if dim.kind == "randint" else "]"
        raise ConfigError(f"{where}: {value!r} outside {dim.kind} [{low}, {high}{closing}")


def _parse_objective(raw: Any, where: str) -> Objective:
    if raw is None:
        return DEFAULT_OBJECTIVE
    data = _mapping(raw, where)
    if unknown := sorted(set(data) - {"metric", "mode", "terms", "extra_terms"}):
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: metric, mode, terms, extra_terms")
    if "extra_terms" in data:  # the shared score plus a space's own terms, without copying it
        if others := sorted(set(data) - {"extra_terms"}):
            raise ConfigError(f"{where}: extra_terms extends the default score; drop {others}")
        d = DEFAULT_OBJECTIVE
        extra = _parse_terms(data["extra_terms"], d.mode, f"{where}.extra_terms")
        return Objective(d.metric, d.mode, {**d.terms, **extra})
    metric, mode = data.get("metric"), data.get("mode", "min")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}.metric: required, the metric name the sweep optimises")
    if mode not in ("min", "max"):
        raise ConfigError(f"{where}.mode: must be min or max, got {mode!r}")
    terms = _parse_terms(data.get("terms"), mode, f"{where}.terms")
    if not terms:
        _check_direction(metric, mode, 1.0, f"{where}.metric")
    return Objective(metric, mode, terms)


def _parse_terms(raw: Any, mode: str, where: str) -> dict[str, float]:
    terms = {k: _number(w) for k, w in _mapping(raw, where).items()}
    for name, weight in terms.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight == 0:
            raise ConfigError(f"{where}.{name}: weight must be a non-zero number, got {weight!r}")
        _check_direction(name, mode, float(weight), f"{where}.{name}")
    return {k: float(w) for k, w in terms.items()}


def _check_direction(name: str, mode: str, weight: float, where: str) -> None:
    """For the evaluator's named metrics: the weight's sign must reward the better direction."""
    if name not in METRIC_DEFINITIONS:
        return
    better_up = higher_is_better(name)
    rewarded = (weight > 0) == (mode == "max")
    if rewarded != better_up:
        better = "higher" if better_up else "lower"
        raise ConfigError(
            f"{where}: {better} is better for {name!r}, but weight {weight} with mode {mode} favours the opposite"
        )
