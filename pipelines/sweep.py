"""`unlearn sweep`: a Ray Tune sweep over one method's search space (``tune_spaces/*.yaml``).

Train V2 pattern: each Tune trial runs a driver function (``sweep_trial``) that builds and fits a
``TorchTrainer`` through ``pipelines.train.fit``. Two Ray Train callbacks ride on the inner run: an
MLflow one (live curves on the trial's child run) and a ``TuneReportCallback`` subclass that forwards
every in-training evaluation to Tune with the sweep ``objective`` (so ASHA can stop weak trials). The
exported model is then evaluated with ``pipelines.evaluate`` and reported once more (``final`` = 1).

The driver opens one parent MLflow run, prepares the shared inputs once, runs the ``Tuner`` (or
``Tuner.restore`` with ``resume_dir``), prints a table, logs a Pareto plot + CSV/Markdown tables on
the parent run, and registers the champion (``pipelines.champion``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines import tracking
from pipelines.champion import ChampionRule, record_no_champion, register_champion, select_champion
from pipelines.evaluate import evaluate, load_shard_rows
from pipelines.finetune import stream_dataset
from pipelines.plots import pareto_front, plot_forget_utility, write_results_table
from pipelines.preprocess import load_manifest
from pipelines.progress import sweep_callbacks
from pipelines.train import TrainJob, export_final_model, fit, storage_dir
from pipelines.tune_space import to_tune
from pipelines.unlearn import evaluate_cached, prepare_inputs
from pipelines.workspace import Workspace
from unlearn_core.config import ConfigError, RunConfig, mlflow_params, with_overrides
from unlearn_core.eval.metrics import higher_is_better
from unlearn_core.eval.report import format_table
from unlearn_core.eval.runner import select_eval_rows
from unlearn_core.search_space import (
    VALUE_KINDS,
    SearchSpace,
    objective_value,
    parse_space,
    sample,
    trial_config,
)

DRIVER_RESOURCE_ENV = "UNLEARN_TUNE_DRIVER_RESOURCE"  # e.g. "tune_driver" on cluster.yaml clusters
DRIVER_CPUS_ENV = "UNLEARN_TUNE_DRIVER_CPUS"  # CPUs reserved per trial driver function (default 1)
# CPUs kept free for Ray Data: evaluate() runs a 1-CPU repartition task next to a 1-CPU actor pool.
DATA_CPUS = 2.0
DRIVER_MEMORY = float(64 * 2**20)  # bytes, the driver's bundle when it holds no CPU
STATE_FILE = "sweep.json"
SPACE_COPY = "search_space.yaml"  # the space file as the sweep started, beside sweep.json
OBJECTIVE = "objective"
# Params whose value changes a prepared input: PUBG's teacher cache and the saliency mask.
PREPARED_KEYS = ("method.params.instruction", "method.params.mask", "method.params.gamma")
TABLE_METRICS = ("forget.leak_rate", "forget_unseen.leak_rate", "retain.vqa_acc", "quality.informativeness",
                 "utility.caption_f1", "quality.hallucination", OBJECTIVE)


@dataclass(frozen=True)
class Objectives:
    """What the search optimises: the scalar ``objective`` or several metrics (Optuna only)."""

    metrics: tuple[str, ...]
    modes: tuple[str, ...]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


@dataclass(frozen=True)
class TrialContext:
    """Plain data every trial needs (passed through ``tune.with_parameters``)."""

    space: SearchSpace
    cfg: dict[str, Any]  # RunConfig dump: absolute workdir, resolved shards and init model
    workers_per_trial: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    train_storage: str


# --------------------------------------------------------------------------- search space + objectives


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
            raise ConfigError(f"{where}: {m!r} is {'higher' if higher_is_better(m) else 'lower'}-is-better, "
                              f"mode {mode} optimises the opposite")
    scalar = {"metric": metrics[0], "mode": modes[0], **({"terms": obj["terms"]} if obj.get("terms") else {})}
    space = parse_space({**data, "objective": scalar}, source=str(p))
    return space, Objectives(tuple(metrics), tuple(modes))


def _check_options(objectives: Objectives, scheduler: str, search: str) -> None:
    if scheduler not in ("asha", "none"):
        raise ConfigError(f"--scheduler must be asha or none, got {scheduler!r}")
    if search not in ("random", "optuna"):
        raise ConfigError(f"--search must be random or optuna, got {search!r}")
    if objectives.multi and scheduler == "asha":
        raise ConfigError("ASHA stops trials on one metric; this space has several objectives "
                          f"{list(objectives.metrics)}: use --scheduler none (with --search optuna)")
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
        raise ConfigError("ASHA needs intermediate evaluations at a fixed cadence: set train.eval_every > 0 "
                          "(in the space's base or with --set), or use --scheduler none")
    # time_attr "step": trials of different lengths are compared at equal training budgets. max_t is
    # one past the longest trial so ASHA never stops a trial at its last step before its final eval.
    return ASHAScheduler(time_attr="step", grace_period=every, max_t=max_steps(space, cfg) + 1,
                         reduction_factor=2)


def _search_alg(kind: str, objectives: Objectives, seed: int, max_concurrent: int,
                start: list[dict[str, Any]]) -> Any:
    """The search algorithm; the space's ``start`` points are its first trials (``points_to_evaluate``)."""
    points = [dict(p) for p in start] or None
    if kind == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a given BasicVariantGenerator: set it here.
        return BasicVariantGenerator(points_to_evaluate=points, random_state=seed, max_concurrent=max_concurrent)
    from ray.tune.search.optuna import OptunaSearch

    if objectives.multi:
        return OptunaSearch(metric=list(objectives.metrics), mode=list(objectives.modes), seed=seed,
                            points_to_evaluate=points)
    return OptunaSearch(seed=seed, points_to_evaluate=points)


def build_tune_config(objectives: Objectives, space: SearchSpace, cfg: RunConfig, *, num_samples: int,
                      scheduler: str, search: str, max_concurrent: int) -> tune.TuneConfig:
    """TuneConfig for a sweep: deterministic trial names, seeded search, ASHA on ``objective``."""
    _check_options(objectives, scheduler, search)
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
    )


def trial_name(trial: Any) -> str:
    """``trial_000``, ``trial_001``...: the trial's creation index (Tune's experiment tag prefix)."""
    index = str(trial.experiment_tag).split("_", 1)[0]
    return f"trial_{int(index):03d}" if index.isdigit() else f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------- resources


def driver_resources(cfg: RunConfig, workers_per_trial: int, cluster: Mapping[str, float]) -> dict[str, float]:
    """What one trial's driver function holds.

    CPUs: ``UNLEARN_TUNE_DRIVER_CPUS`` if set; else 1, or 0 (plus a token amount of memory, as Tune needs
    a non-empty bundle) on a cluster too small to keep 1 CPU for the driver next to a trial's workers and
    the ``DATA_CPUS`` an evaluation needs (the driver function mostly waits). Plus one unit of the
    custom resource named in ``UNLEARN_TUNE_DRIVER_RESOURCE`` (e.g. ``tune_driver``), if set.
    """
    if os.environ.get(DRIVER_CPUS_ENV):
        cpus = float(os.environ[DRIVER_CPUS_ENV])
    else:
        spare = cluster.get("CPU", 0.0) - DATA_CPUS - workers_per_trial * cfg.train.cpus_per_worker
        cpus = 1.0 if spare >= 1.0 else 0.0
    res = {"CPU": cpus}
    if cpus == 0:
        res["memory"] = DRIVER_MEMORY
    if custom := os.environ.get(DRIVER_RESOURCE_ENV):
        res[custom] = 1.0
    return res


def _trials_that_fit(cfg: RunConfig, workers_per_trial: int, driver: Mapping[str, float],
                     cluster: Mapping[str, float]) -> int:
    per_cpu = driver["CPU"] + workers_per_trial * cfg.train.cpus_per_worker
    fits = [math.floor((cluster.get("CPU", 0) - DATA_CPUS) / per_cpu + 1e-9)]
    if cfg.train.use_gpu:
        fits.append(math.floor(cluster.get("GPU", 0) / workers_per_trial + 1e-9))
    fits += [math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in driver.items() if k not in ("CPU", "memory")]
    return min(fits)


def default_max_concurrent(cfg: RunConfig, workers_per_trial: int, driver: Mapping[str, float],
                           cluster: Mapping[str, float]) -> int:
    """Trials that fit at once: cluster CPUs (less ``DATA_CPUS`` kept for Ray Data), GPUs and driver slots
    over one trial's needs (its driver + ``workers_per_trial`` workers); at least 1."""
    return max(1, _trials_that_fit(cfg, workers_per_trial, driver, cluster))


def cluster_capacity(now: Mapping[str, float], autoscaler_max: Mapping[str, float] | None) -> dict[str, float]:
    """What the cluster can hold: its resources ``now``, raised to the autoscaler's maximum where it
    reports a finite one (an autoscaling cluster may start with a 0-CPU head and no workers)."""
    out = {k: float(v) for k, v in now.items()}
    for k, v in (autoscaler_max or {}).items():
        if 0 < v < 2**62:  # Ray reports an unbounded node group as sys.maxsize
            out[k] = max(out.get(k, 0.0), float(v))
    return out


def _autoscaler_max_resources() -> dict[str, float] | None:
    """The autoscaler's maximum cluster resources, where Ray publishes them (autoscaler v2, e.g. KubeRay;
    the v1 autoscaler of ``ray up`` does not): None when unknown."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: absent or changed in this Ray version
        return None
    return {k: float(v) for k, v in found.items()} if found else None


def capacity_note(cfg: RunConfig, workers_per_trial: int, driver: Mapping[str, float],
                  cluster: Mapping[str, float], autoscaler_known: bool) -> str | None:
    """A line for the log when the cluster, as far as the sweep can see, cannot hold even one trial
    (typical of an autoscaling cluster still at its 0-CPU head): the sweep then runs 1 trial at a time."""
    need = {k: v for k, v in driver.items() if k != "memory"}
    need["CPU"] = need.get("CPU", 0.0) + workers_per_trial * cfg.train.cpus_per_worker
    if cfg.train.use_gpu:
        need["GPU"] = float(workers_per_trial)
    short = {k: v for k, v in need.items() if cluster.get(k, 0.0) + 1e-9 < v}
    if not short:
        return None
    have = ", ".join(f"{k} {cluster.get(k, 0.0):g}" for k in sorted(short))
    where = "the autoscaler's maximum" if autoscaler_known else "the cluster now"
    return (f"{where} has {have}, less than one trial needs ({', '.join(f'{k} {v:g}' for k, v in sorted(need.items()))}"
            f"): running 1 trial at a time; an autoscaling cluster adds nodes while trials wait "
            "(pass --max-concurrent K to run more at once)")


# --------------------------------------------------------------------------- trial side


class _LiveCurves(tracking.MlflowReportCallback):
    """Train reports -> the child run: ``train/<key>`` for training, ``eval/<metric>`` for evaluations."""

    def __init__(self, tracking_uri: str, run_id: str, objective: Any, logged_through: int | None = None) -> None:
        super().__init__(tracking_uri, run_id, prefix="")
        self.objective = objective
        self.logged_through = logged_through  # a resumed trial's run already has the steps up to here

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        if self.logged_through is not None and int(m.get("step", 0)) <= self.logged_through:
            return
        out = {("step" if k == "step" else f"eval/{k}" if "." in k else f"train/{k}"): v for k, v in m.items()}
        if (obj := _objective_of(self.objective, m)) is not None:
            out[f"eval/{OBJECTIVE}"] = obj
        super().after_report(run_context, [out], checkpoint)


class _EvalToTune(TuneReportCallback):
    """Forward only the in-training evaluations to Tune, with ``objective``, ``step`` and trial info."""

    def __init__(self, objective: Any, extra: dict[str, Any]) -> None:
        super().__init__()
        self.objective = objective
        self.extra = extra

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        m = metrics[0] if metrics else {}
        evals = {k: v for k, v in m.items() if "." in k}
        obj = _objective_of(self.objective, m)
        if not evals or obj is None:
            return
        super().after_report(run_context, [{**evals, "step": m.get("step", 0.0), OBJECTIVE: obj, "final": 0,
                                            **self.extra}], None)


def _objective_of(objective: Any, metrics: Mapping[str, Any]) -> float | None:
    try:
        return objective_value(objective, metrics)
    except ConfigError:
        return None


def _child_run(ctx: TrialContext, name: str, cfg: RunConfig) -> tuple[str, int | None]:
    """The trial's MLflow run under the parent and the last step it has logged (None for a new run):
    a resumed trial that starts again reuses its run and does not log a step twice."""
    client = MlflowClient(ctx.tracking_uri)
    found = client.search_runs(
        [ctx.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.trial_name = '{name}'",
    )
    if found:
        run = found[0]
        client.update_run(run.info.run_id, status="RUNNING")
        steps = [int(m.step) for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
        return run.info.run_id, max(steps, default=None)
    run = client.create_run(ctx.experiment_id, run_name=f"{ctx.sweep_name}-{name}", tags={
        "mlflow.parentRunId": ctx.parent_run_id, "trial_name": name, "job": "sweep-trial",
        "method": cfg.method.name, "sweep": ctx.sweep_name})
    params = mlflow_params(cfg)
    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]])
    return run.info.run_id, None


def _outside_trial_group(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a 0-CPU Ray task outside the trial's placement group.

    Tune runs the driver function in a placement group that captures its child tasks; Ray Data and
    Ray tasks started from there (evaluation, PUBG teacher cache, saliency mask) would wait forever for
    the driver's small bundle. From this task they use the cluster's free resources instead.
    """
    task = ray.remote(num_cpus=0, max_retries=0)(fn).options(scheduling_strategy="DEFAULT")
    return ray.get(task.remote(*args, **kwargs))


def _prepare_locked(cfg: RunConfig, ws: Workspace, uri: str) -> dict[str, Any]:
    """``prepare_inputs`` under a workdir file lock: trials needing the same new cache never race."""
    from filelock import FileLock

    with FileLock(str(ws.root / ".sweep-prepare.lock")):
        return prepare_inputs(cfg, ws, uri, log=print)


def sweep_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial (the driver function): inputs, child run, TorchTrainer, export, final eval."""
    name = tune.get_context().get_trial_name()
    cfg = trial_config(ctx.space, config, RunConfig.model_validate(ctx.cfg))
    cfg = with_overrides(cfg, {"train.num_workers": ctx.workers_per_trial})
    ws = Workspace(Path(cfg.workdir))
    run_id, logged_through = _child_run(ctx, name, cfg)
    client = MlflowClient(ctx.tracking_uri)
    try:
        inputs = _outside_trial_group(_prepare_locked, cfg, ws, ctx.tracking_uri)
        shards = inputs["shards"]
        extra = {"trial_name": name, "mlflow_run_id": run_id}
        curves = _LiveCurves(ctx.tracking_uri, run_id, ctx.space.objective, logged_through)
        result = fit(_train_job(cfg, inputs), _datasets(inputs), name=name, storage_path=ctx.train_storage,
                     callbacks=[curves, _EvalToTune(ctx.space.objective, extra)])
        curves.flush()  # values the controller could not send (tracking server down) come back here
        model_dir = export_final_model(result, ws.models / "sweeps" / ctx.sweep_name / name)
        after = _outside_trial_group(evaluate, model_dir, shards, max_per_group=cfg.train.eval_max_samples)
        metrics = dict(after["metrics"])
        obj = objective_value(ctx.space.objective, metrics)
        sha = tracking.weights_sha256(model_dir)
        final = {**metrics, OBJECTIVE: obj}
        if ctx.space.objective.terms:
            final[ctx.space.objective.metric] = obj
        step = cfg.train.steps
        if OBJECTIVE not in client.get_run(run_id).data.metrics:  # not yet logged by an earlier attempt
            client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), step)
                                              for k, v in final.items() if isinstance(v, int | float)])
        eval_path = ws.results / f"eval-{ctx.sweep_name}-{name}.json"
        eval_path.parent.mkdir(parents=True, exist_ok=True)
        eval_path.write_text(json.dumps(after, indent=1))
        client.log_artifact(run_id, str(eval_path))
        client.set_tag(run_id, "model_dir", str(model_dir))
        client.set_tag(run_id, tracking.SHA_TAG, sha)
        client.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        # The sweep driver sets the run's final status once Tune says how the trial ended
        # (``_close_unfinished``): a trial that ASHA stops can also raise here, and a status written
        # from this side could land after the driver's KILLED.
        client.set_tag(run_id, "error", f"{type(exc).__name__}: {exc}"[:4000])
        raise
    tune.report({**final, "step": float(step), "final": 1, "model_dir": str(model_dir),
                 tracking.SHA_TAG: sha, **extra})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _train_job(cfg: RunConfig, inputs: dict[str, Any]) -> TrainJob:
    shards, init_model = inputs["shards"], inputs["init_model"]
    rows = select_eval_rows(load_shard_rows(shards), max_per_group=max(4, cfg.train.eval_max_samples // 4))
    return TrainJob(cfg=cfg.model_dump(), mode="unlearn", processor_dir=str(init_model), init_model=str(init_model),
                    image_size=int(load_manifest(shards)["config"]["image_size"]),
                    eval_records=rows if cfg.train.eval_every else None, mask_path=inputs["mask_path"])


def _datasets(inputs: dict[str, Any]) -> dict[str, Any]:
    out = {"forget": stream_dataset(inputs["shards"], "forget", forget_dir=inputs["forget_dir"])}
    if inputs["method"].needs_retain:
        out["retain"] = stream_dataset(inputs["shards"], "retain")
    return out


# --------------------------------------------------------------------------- driver


def sweep_name_for(space_path: str | Path, cfg: RunConfig, options: Mapping[str, Any]) -> str:
    """``sweep-<space>-<hash of the space file, the config and the sweep options>``: stable across runs."""
    text = Path(space_path).read_text()
    blob = json.dumps({"space": text, "cfg": cfg.model_dump(), "options": dict(options)}, sort_keys=True, default=str)
    return f"sweep-{Path(space_path).stem}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _resolved_cfg(cfg: RunConfig) -> RunConfig:
    """Absolute paths: trial drivers run with their working directory in the trial folder."""
    over: dict[str, Any] = {"workdir": str(Path(cfg.workdir).resolve())}
    for key, value in (("records", cfg.records), ("shards", cfg.shards)):
        if value:
            over[key] = str(Path(value).resolve())
    return with_overrides(cfg, over)


def _prepare_all(space: SearchSpace, cfg: RunConfig, ws: Workspace, uri: str, log: Callable[..., None]
                 ) -> dict[str, Any]:
    """Shared inputs once; then every discrete combination of the params prepared inputs depend on."""
    probe = sample(space, random.Random(cfg.train.seed))
    inputs = prepare_inputs(trial_config(space, probe, cfg), ws, uri, log)
    dims = {k: space.dims[k] for k in PREPARED_KEYS if k in space.dims}
    if dims and all(d.kind in VALUE_KINDS for d in dims.values()):
        cfg_shared = _shared_cfg(cfg, inputs)
        for combo in itertools.product(*(d.args for d in dims.values())):
            prepare_inputs(trial_config(space, {**probe, **dict(zip(dims, combo, strict=True))}, cfg_shared),
                           ws, uri, log)
    elif dims:
        log(f"{sorted(dims)} include a continuous range: trials prepare their inputs under a file lock")
    return inputs


def _shared_cfg(cfg: RunConfig, inputs: dict[str, Any]) -> RunConfig:
    """Trials reuse the driver's shards and initial model folder (no re-pull of a registry model)."""
    return with_overrides(cfg, {"shards": str(Path(inputs["shards"]).resolve()),
                                "model.spec": str(Path(inputs["init_model"]).resolve())})


def _open_parent(uri: str, exp_id: str, state: dict[str, Any], space: SearchSpace) -> str:
    client = MlflowClient(uri)
    if state.get("parent_run_id"):
        client.update_run(state["parent_run_id"], status="RUNNING")
        return str(state["parent_run_id"])
    run = client.create_run(exp_id, run_name=state["sweep_name"],
                            tags={"job": "sweep", "method": space.method, "sweep": state["sweep_name"]})
    params = {"space": state["space_path"], "num_samples": state["num_samples"], "scheduler": state["scheduler"],
              "search": state["search"], "max_concurrent": state["max_concurrent"],
              "workers_per_trial": state["workers_per_trial"], "method": space.method}
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    client.log_text(run.info.run_id, Path(state["space_path"]).read_text(), "search_space.yaml")
    return run.info.run_id


def _new_state(space_path: str | Path, cfg: RunConfig, *, num_samples: int, scheduler: str, search: str,
               max_concurrent: int | None, workers_per_trial: int, rule: ChampionRule) -> dict[str, Any]:
    options = {"num_samples": num_samples, "scheduler": scheduler, "search": search,
               "max_concurrent": max_concurrent, "workers_per_trial": workers_per_trial}
    name = sweep_name_for(space_path, cfg, options)
    return {"sweep_name": name, "space_path": str(Path(space_path).resolve()), "cfg": cfg.model_dump(),
            "champion_rule": {**rule.__dict__, "leak_metrics": list(rule.leak_metrics)}, **options}


def run_sweep(
    space_path: str | Path,
    cfg: RunConfig,
    *,
    num_samples: int | None = None,
    scheduler: str = "asha",
    search: str = "random",
    max_concurrent: int | None = None,
    workers_per_trial: int = 1,
    resume_dir: str | Path | None = None,
    champion_rule: ChampionRule | None = None,
    if_exists: str = "error",
    log: Callable[..., None] = print,
) -> dict[str, Any]:
    """Run (or resume) a sweep; returns the sweep folder, parent run, per-trial results and champion.

    With ``resume_dir`` (a sweep folder) everything else comes from its ``sweep.json``: finished trials
    are kept, unfinished or errored ones run again (their Train run resumes from its last checkpoint).
    ``if_exists``: what to do when the same sweep (space, config, options) already has a folder:
    ``"error"`` (the CLI: the user chooses ``--resume``) or ``"resume"`` (``unlearn demo``).
    """
    if if_exists not in ("error", "resume"):
        raise ConfigError(f"if_exists: expected 'error' or 'resume', got {if_exists!r}")
    if resume_dir is not None:
        sweep_dir = Path(resume_dir).resolve()
        if not (sweep_dir / STATE_FILE).is_file():
            raise ConfigError(f"--resume {sweep_dir}: not a sweep folder (no {STATE_FILE})")
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        cfg = RunConfig.model_validate(state["cfg"])
        rule = ChampionRule(**{**state["champion_rule"], "leak_metrics": tuple(state["champion_rule"]["leak_metrics"])})
        copy = sweep_dir / SPACE_COPY  # the space as it was when the sweep started
        space, objectives = load_sweep_space(copy if copy.is_file() else state["space_path"])
        log(f"resuming sweep {state['sweep_name']} from {sweep_dir}")
    else:
        cfg = _resolved_cfg(cfg)
        rule = champion_rule or ChampionRule()
        space, objectives = load_sweep_space(space_path)
        _check_options(objectives, scheduler, search)
        state = _new_state(space_path, cfg, num_samples=num_samples or space.num_samples, scheduler=scheduler,
                           search=search, max_concurrent=max_concurrent, workers_per_trial=workers_per_trial,
                           rule=rule)
        sweep_dir = Path(storage_dir(cfg.workdir)) / state["sweep_name"]
        if (sweep_dir / STATE_FILE).is_file() and tune.Tuner.can_restore(str(sweep_dir)):
            if if_exists == "resume":
                log(f"[cached] sweep {sweep_dir.name} exists: resuming it (finished trials are kept)")
                return run_sweep(space_path, cfg, resume_dir=sweep_dir, log=log)
            raise ConfigError(f"sweep {sweep_dir} exists (same space, config and options): "
                              f"continue it with --resume {sweep_dir}, or change the config")
        if (sweep_dir / STATE_FILE).is_file():
            state["parent_run_id"] = json.loads((sweep_dir / STATE_FILE).read_text()).get("parent_run_id")

    ws = Workspace(Path(cfg.workdir))
    uri = state.setdefault("tracking_uri", tracking.resolve_tracking_uri(cfg.tracking, ws.root))
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    parent = state["parent_run_id"] = _open_parent(uri, exp_id, state, space)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / SPACE_COPY).is_file():
        shutil.copyfile(state["space_path"], sweep_dir / SPACE_COPY)
    (sweep_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
    log(f"sweep {state['sweep_name']}: {state['num_samples']} trial(s) of {space.method}, scheduler "
        f"{state['scheduler']}, search {state['search']}; MLflow parent run {parent}; folder {sweep_dir}")
    client = MlflowClient(uri)
    try:
        inputs = _prepare_all(space, cfg, ws, uri, log)
        # The starting model is evaluated like the trials' final models (the space's base may set
        # train.eval_max_samples): the champion rule compares the two.
        eval_samples = int(space.base.get("train.eval_max_samples", cfg.train.eval_max_samples))
        before = evaluate_cached(inputs["init_model"], inputs["shards"], ws, eval_samples)["metrics"]
        if not state.get("before_logged"):
            client.log_batch(parent, metrics=[mlflow.entities.Metric(f"before.{k}", float(v), _now_ms(), 0)
                                              for k, v in before.items()])
            state["before_logged"] = True
            (sweep_dir / STATE_FILE).write_text(json.dumps(state, indent=1))
        grid = _fit(space, objectives, cfg, state, sweep_dir, inputs, uri, exp_id, resume_dir is not None, log)
        trials = collect_trials(grid)
        _close_unfinished(client, trials)
        summary = _report(space, trials, before, sweep_dir, client, parent, log)
        summary["champion"] = _champion(space, objectives, cfg, trials, before, rule, uri, parent, log)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return {"sweep_dir": str(sweep_dir), "sweep_name": state["sweep_name"], "parent_run_id": parent,
            "before": before, "trials": trials, **summary}


def _fit(space: SearchSpace, objectives: Objectives, cfg: RunConfig, state: dict[str, Any], sweep_dir: Path,
         inputs: dict[str, Any], uri: str, exp_id: str, resuming: bool, log: Callable[..., None]) -> Any:
    workers = int(state["workers_per_trial"])
    ctx = TrialContext(space=space, cfg=_shared_cfg(cfg, inputs).model_dump(), workers_per_trial=workers,
                       tracking_uri=uri, experiment_id=exp_id, parent_run_id=state["parent_run_id"],
                       sweep_name=state["sweep_name"], train_storage=str(sweep_dir / "train"))
    most = _autoscaler_max_resources()
    cluster = cluster_capacity(ray.cluster_resources(), most)
    driver = driver_resources(cfg, workers, cluster)
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), driver)
    if resuming and tune.Tuner.can_restore(str(sweep_dir)):
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=True)
    else:
        concurrent = state["max_concurrent"] or default_max_concurrent(cfg, workers, driver, cluster)
        if not state["max_concurrent"] and (note := capacity_note(cfg, workers, driver, cluster, most is not None)):
            log(note)
        log(f"up to {concurrent} concurrent trial(s); each: driver {driver} + {workers} worker(s) x "
            f"{cfg.train.cpus_per_worker} CPU{' + 1 GPU' if cfg.train.use_gpu else ''}")
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune(space, grid_as_choice=state["search"] == "optuna"),
            tune_config=build_tune_config(objectives, space, cfg, num_samples=int(state["num_samples"]),
                                          scheduler=state["scheduler"], search=state["search"],
                                          max_concurrent=concurrent),
            run_config=tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent),
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      callbacks=sweep_callbacks(int(state["num_samples"]))),
        )
    return tuner.fit()


def collect_trials(grid: Any) -> dict[str, dict[str, Any]]:
    """ResultGrid -> trial name -> {status, metrics, config, model_dir, run_id, step}."""
    out: dict[str, dict[str, Any]] = {}
    for result in grid:
        m = dict(result.metrics or {})
        name = m.get("trial_name") or Path(result.path).name
        status = "failed" if result.error else "completed" if m.get("final") == 1 else "stopped"
        metrics = {k: float(v) for k, v in m.items()
                   if ("." in k or k == OBJECTIVE) and isinstance(v, int | float) and not isinstance(v, bool)}
        params = {k: v for k, v in (result.config or {}).items()}
        out[name] = {"status": status, "metrics": metrics, "params": params, "model_dir": m.get("model_dir"),
                     "run_id": m.get("mlflow_run_id"), "step": m.get("step"), tracking.SHA_TAG: m.get(tracking.SHA_TAG),
                     "error": str(result.error)[:500] if result.error else None}
    return dict(sorted(out.items()))


def _close_unfinished(client: MlflowClient, trials: Mapping[str, dict[str, Any]]) -> None:
    """Final status of the runs of trials that did not complete: KILLED (stopped early) or FAILED."""
    for t in trials.values():
        if not t["run_id"] or t["status"] == "completed":
            continue
        if t["status"] == "stopped":
            client.set_tag(t["run_id"], "stopped_early", f"step {t['step']}")
        status = "KILLED" if t["status"] == "stopped" else "FAILED"
        if client.get_run(t["run_id"]).info.status != status:
            client.set_terminated(t["run_id"], status)


def _report(space: SearchSpace, trials: Mapping[str, dict[str, Any]], before: Mapping[str, float], sweep_dir: Path,
            client: MlflowClient, parent: str, log: Callable[..., None]) -> dict[str, Any]:
    done = {n: t["metrics"] for n, t in trials.items() if t["status"] == "completed"}
    front = pareto_front(done)
    log(format_table({"vanilla": before, **{n: {k: v for k, v in m.items() if k != OBJECTIVE} for n, m in done.items()}}))
    for n, t in trials.items():
        params = ", ".join(f"{k}={_short(t['params'].get(k))}" for k in space.dims)
        obj = t["metrics"].get(OBJECTIVE)
        log(f"{n}: {t['status']}" + (f" at step {t['step']:g}" if t["status"] == "stopped" and t["step"] else "")
            + (f", objective ({space.objective.mode}) {obj:.4g}" if obj is not None else "") + f"; {params}"
            + (f"; error: {t['error']}" if t["error"] else ""))
    log(f"Pareto front (leak rate, retain accuracy, informativeness): {', '.join(front) or '-'}")
    out_dir = sweep_dir / "report"
    png = plot_forget_utility(done, out_dir / "pareto.png", methods={n: space.method for n in done},
                              highlight=front, reference={"vanilla": before}, title=sweep_dir.name)
    columns = ["trial", "status", "pareto", "step", *space.dims, *TABLE_METRICS, "run_id"]
    rows = [{"trial": n, "status": t["status"], "pareto": n in front, "step": t["step"], "run_id": t["run_id"],
             **{k: t["params"].get(k) for k in space.dims}, **t["metrics"]} for n, t in trials.items()]
    rows.append({"trial": "vanilla", "status": "reference", **before})
    paths = write_results_table(rows, columns, out_dir / "sweep_results.csv", out_dir / "sweep_results.md")
    for p in [png, *paths]:
        client.log_artifact(parent, str(p))
    counts = {"trials_completed": len(done), "trials_stopped": sum(t["status"] == "stopped" for t in trials.values()),
              "trials_failed": sum(t["status"] == "failed" for t in trials.values())}
    logged = client.get_run(parent).data.metrics
    if any(logged.get(k) != v for k, v in counts.items()):  # a resumed, already reported sweep logs nothing twice
        client.log_batch(parent, metrics=[mlflow.entities.Metric(k, float(v), _now_ms(), len(trials))
                                          for k, v in counts.items()])
    client.set_tag(parent, "pareto_front", ",".join(front))
    return {"pareto": front, "artifacts": [str(p) for p in [png, *paths]]}


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _champion(space: SearchSpace, objectives: Objectives, cfg: RunConfig, trials: Mapping[str, dict[str, Any]],
              before: Mapping[str, float], rule: ChampionRule, uri: str, parent: str,
              log: Callable[..., None]) -> dict[str, Any]:
    done = {n: t["metrics"] for n, t in trials.items() if t["status"] == "completed"}
    choice = select_champion(done, before, rule=rule, objective=OBJECTIVE, objective_mode=space.objective.mode)
    for note in choice.notes:
        log(f"champion rule: {note}")
    if choice.trial is None:
        log(f"NO CHAMPION: {choice.reason} (rule: {rule.describe()})")
        record_no_champion(choice, rule, tracking_uri=uri, parent_run_id=parent)
        return {"trial": None, "reason": choice.reason, "qualifying": []}
    if choice.fallback_used:
        log(f"no trial meets the champion rule ({rule.describe()}); falling back to the best objective")
    t = trials[choice.trial]
    name = cfg.tracking.registered_model_name or f"lvlm-unlearn-{space.method}"
    reg = register_champion(choice, rule, run_id=t["run_id"], model_dir=t["model_dir"], registered_name=name,
                            tracking_uri=uri, parent_run_id=parent)
    log(f"champion: {choice.trial} ({choice.reason}) -> {reg['uri']} (version {reg['version']})")
    return {"trial": choice.trial, "reason": choice.reason, "qualifying": choice.qualifying,
            "fallback": choice.fallback_used, "metrics": choice.metrics, **reg}
