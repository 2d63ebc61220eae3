"""A sweep's Ray Tune ``TuneConfig``: its objectives (one scalar or several, from the space file), the
scheduler (ASHA), the search algorithm and the trial names. The space itself is
``unlearn_core.search_space``; its Tune ``param_space`` is ``pipelines.sweep.param_space``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unlearn_core.config import ConfigError, RunConfig
from unlearn_core.eval.metrics import higher_is_better
from unlearn_core.search_space import VALUE_KINDS, SearchSpace, parse_space

OBJECTIVE = "objective"


@dataclass(frozen=True)
class Objectives:
    """What the search optimises: the scalar ``objective`` or several metrics (Optuna only)."""

    metrics: tuple[str, ...]
    modes: tuple[str, ...]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


def load_sweep_space(path: str | Path) -> tuple[SearchSpace, Objectives]:
    """``load_space`` plus multi-objective spaces: ``objective: {metric: [a, b], mode: [min, max]}``.

    For a multi-objective file the scalar ``objective`` still reported is the first metric (or the
    ``terms`` sum if given); Optuna optimises the listed metrics themselves.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    data = yaml.safe_load(p.read_text())
    obj = data.get("objective") if isinstance(data, dict) else None
    if not (isinstance(obj, dict) and isinstance(obj.get("metric"), list)):
        space = parse_space(data, source=str(p))
        return space, Objectives((OBJECTIVE,), (space.objective.mode,))
    metrics, modes = [str(m) for m in obj["metric"]], obj.get("mode", "min")
    modes = [modes] * len(metrics) if isinstance(modes, str) else list(modes)
    where = f"{p}: objective"
    if not metrics or len(modes) != len(metrics):
        raise ConfigError(f"{where}: metric and mode lists must be non-empty and of the same length")
    for m, mode in zip(metrics, modes, strict=True):
        if mode not in ("min", "max"):
            raise ConfigError(f"{where}.mode: must be min or max, got {mode!r}")
        if (mode == "max") != higher_is_better(m):
            raise ConfigError(
                f"{where}: {m!r} is {'higher' if higher_is_better(m) else 'lower'}-is-better, "
                f"mode {mode} optimises the opposite"
            )
    scalar = {"metric": metrics[0], "mode": modes[0], **({"terms": obj["terms"]} if obj.get("terms") else {})}
    space = parse_space({**data, "objective": scalar}, source=str(p))
    return space, Objectives(tuple(metrics), tuple(modes))


def check_options(objectives: Objectives, scheduler: str, search: str) -> None:
    if scheduler not in ("asha", "none"):
        raise ConfigError(f"--scheduler must be asha or none, got {scheduler!r}")
    if search not in ("random", "optuna"):
        raise ConfigError(f"--search must be random or optuna, got {search!r}")
    if objectives.multi and scheduler == "asha":
        raise ConfigError(
            "ASHA stops trials on one metric; this space has several objectives "
            f"{list(objectives.metrics)}: use --scheduler none (with --search optuna)"
        )
    if objectives.multi and search != "optuna":
        raise ConfigError("several objectives need --search optuna (random search has no objective)")


def max_steps(space: SearchSpace, cfg: RunConfig) -> int:
    dim = space.dims.get("train.steps")
    if dim is None:
        return int(space.base.get("train.steps", cfg.train.steps))
    return int(max(dim.args)) if dim.kind in VALUE_KINDS else int(dim.args[1]) - 1


def _scheduler(kind: str, space: SearchSpace, cfg: RunConfig) -> Any:
    if kind == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    every = int(space.base.get("train.eval_every", cfg.train.eval_every))
    if every <= 0 or "train.eval_every" in space.dims:
        raise ConfigError(
            "ASHA needs intermediate evaluations at a fixed cadence: set train.eval_every > 0 "
            "(in the space's base or with --set), or use --scheduler none"
        )
    # time_attr "step": trials of different lengths are compared at equal training budgets. max_t is
    # one past the longest trial so ASHA never stops a trial at its last step before its final eval.
    return ASHAScheduler(
        time_attr="step", grace_period=every, max_t=max_steps(space, cfg) + 1, reduction_factor=2
    )


def _search_alg(
    kind: str, objectives: Objectives, seed: int, max_concurrent: int, start: list[dict[str, Any]]
) -> Any:
    """The search algorithm; the space's ``start`` points are its first trials (``points_to_evaluate``)."""
    points = [dict(p) for p in start] or None
    if kind == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a given BasicVariantGenerator: set it here.
        return BasicVariantGenerator(
            points_to_evaluate=points, random_state=seed, max_concurrent=max_concurrent
        )
    from ray.tune.search.optuna import OptunaSearch

    if objectives.multi:
        return OptunaSearch(
            metric=list(objectives.metrics), mode=list(objectives.modes), seed=seed, points_to_evaluate=points
        )
    return OptunaSearch(seed=seed, points_to_evaluate=points)


def build_tune_config(
    objectives: Objectives,
    space: SearchSpace,
    cfg: RunConfig,
    *,
    num_samples: int,
    scheduler: str,
    search: str,
    max_concurrent: int,
    reuse_actors: bool = False,
) -> Any:
    """``tune.TuneConfig`` for a sweep: deterministic trial names, seeded search, ASHA on ``objective``.
    ``reuse_actors``: a finished trial's actor runs the next trial (in-process trials: the training
    stack stays imported). (Ray Tune is imported here, not at module level: the CLI validates a space
    without it.)"""
    from ray import tune

    check_options(objectives, scheduler, search)
    single = not objectives.multi
    return tune.TuneConfig(
        metric=OBJECTIVE if single else None,
        mode=objectives.modes[0] if single else None,
        search_alg=_search_alg(search, objectives, cfg.train.seed, max_concurrent, list(space.start)),
        scheduler=_scheduler(scheduler, space, cfg),
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent if search != "random" else None,
        trial_name_creator=trial_name,
        trial_dirname_creator=trial_name,
        reuse_actors=reuse_actors,
    )


def trial_name(trial: Any) -> str:
    """``trial_000``, ``trial_001``...: the trial's creation index (Tune's experiment tag prefix)."""
    index = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(index):03d}" if index.isdigit() else f"trial_{trial.trial_id}"
