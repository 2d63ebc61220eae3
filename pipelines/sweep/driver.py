"""`unlearn sweep`: a Ray Tune sweep over one method's search space (``tune_spaces/*.yaml``).

Train V2 pattern: each Tune trial runs a driver function (``sweep_trial``) that builds and fits a
``TorchTrainer`` through ``pipelines.train.fit``. Two Ray Train callbacks ride on the inner run: an
MLflow one (live curves on the trial's child run) and a ``TuneReportCallback`` subclass that forwards
every in-training evaluation to Tune with the sweep ``objective`` (so ASHA can stop weak trials). The
exported model is then evaluated with ``pipelines.evaluate`` and reported once more (``final`` = 1).

The driver opens one parent MLflow run, prepares the shared inputs once, runs the ``Tuner`` (or
``Tuner.restore`` with ``resume_dir``), prints a table, logs a Pareto plot + CSV/Markdown tables on
the parent run, and registers the champion (``pipelines.sweep.champion``).
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from pipelines import tracking
from pipelines.evaluate import evaluate_cached
from pipelines.ray_env import autoscaler_max_resources
from pipelines.sweep.champion import ChampionRule
from pipelines.sweep.param_space import tune_param_space
from pipelines.sweep.report import (
    ChampionOutcome,
    TrialOutcome,
    close_unfinished,
    collect_trials,
    pick_champion,
    write_report,
)
from pipelines.sweep.resources import (
    capacity_note,
    cluster_capacity,
    default_max_concurrent,
    driver_resources,
    has_cpu_less_node,
    in_process_trial_resources,
    sizing_resources,
)
from pipelines.sweep.state import SPACE_COPY, STATE_FILE, SweepState, open_parent
from pipelines.sweep.train_groups import GROUP_KEY, ReleaseEndedTrialGroups, release_groups
from pipelines.sweep.trial import TrialContext, sweep_trial
from pipelines.sweep.tune_config import Objectives, build_tune_config, check_options, load_sweep_space
from pipelines.train import storage_dir, sweep_callbacks
from pipelines.train.trainer import WorkerLoop
from pipelines.train.unlearn import PreparedInputs, prepare_inputs
from pipelines.workspace import Workspace
from unlearn_core.config import ConfigError, RunConfig, resolve_launcher, with_overrides
from unlearn_core.search_space import SearchSpace, sample, trial_config


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its folder and parent run, the starting model's and every trial's outcome,
    the Pareto front, the report files and the champion."""

    sweep_dir: Path
    sweep_name: str
    parent_run_id: str
    before: dict[str, float]  # the starting model's evaluation
    trials: dict[str, TrialOutcome]
    pareto: list[str]
    artifacts: list[str]  # the plot and the CSV / Markdown tables (also on the parent run)
    champion: ChampionOutcome


def _resolved_cfg(cfg: RunConfig) -> RunConfig:
    """Absolute paths: trial drivers run with their working directory in the trial folder."""
    over: dict[str, Any] = {"workdir": str(Path(cfg.workdir).resolve())}
    for key, value in (("records", cfg.records), ("shards", cfg.shards)):
        if value:
            over[key] = str(Path(value).resolve())
    return with_overrides(cfg, over)


def first_points(space: SearchSpace, seed: int) -> list[dict[str, Any]]:
    """The points the driver prepares inputs for before any trial: the space's start points (the first
    trials), each completed by one seeded sample, or that sample alone. Other values of the params a
    prepared input depends on (PUBG's instruction, the mask group) are prepared by the first trial
    that samples them (under a file lock, then cached), so a 2-trial sweep over 3 instructions and 4
    mask groups builds what its 2 trials use, not all 12 combinations."""
    probe = sample(space, random.Random(seed))
    return [{**probe, **dict(point)} for point in space.start] or [probe]


def _prepare_first(
    space: SearchSpace, cfg: RunConfig, ws: Workspace, uri: str, log: Callable[..., None]
) -> PreparedInputs:
    """Shared inputs (shards, starting model) and the first trials' prepared inputs, once."""
    first, *rest = first_points(space, cfg.train.seed)
    inputs = prepare_inputs(trial_config(space, first, cfg), ws, uri, log)
    cfg_shared = _shared_cfg(cfg, inputs)
    for point in rest:
        prepare_inputs(trial_config(space, point, cfg_shared), ws, uri, log)
    return inputs


def _shared_cfg(cfg: RunConfig, inputs: PreparedInputs) -> RunConfig:
    """Trials reuse the driver's shards and initial model folder (no re-pull of a registry model)."""
    return with_overrides(
        cfg,
        {
            "shards": str(inputs.shards.resolve()),
            "model.spec": str(inputs.init_model.resolve()),
        },
    )


def run_sweep(
    space_path: str | Path,
    cfg: RunConfig,
    *,
    num_samples: int | None = None,
    scheduler: str = "asha",
    search: str | None = None,
    max_concurrent: int | None = None,
    workers_per_trial: int = 1,
    max_failures: int = 0,
    resume_dir: str | Path | None = None,
    champion_rule: ChampionRule | None = None,
    audit: bool = False,
    if_exists: str = "error",
    log: Callable[..., None] = print,
    table: bool = True,
    loop: WorkerLoop | None = None,
) -> SweepResult:
    """Run (or resume) a sweep.

    With ``resume_dir`` (a sweep folder) everything else comes from its ``sweep.json``: finished trials
    are kept, unfinished or errored ones run again (their Train run resumes from its last checkpoint).
    ``if_exists``: what to do when the same sweep (space, config, options) already has a folder:
    ``"error"`` (the CLI: the user chooses ``--resume``) or ``"resume"`` (``unlearn demo``).
    ``table=False`` leaves out the trials' metric table (the demo prints the champion in its own).
    ``search`` None: the space's own (``search:`` in its file), else random.
    ``max_failures``: how often Tune starts a failed trial again (its actor died with its node, or it
    raised; -1: always); the new attempt resumes from the trial's last checkpoint and reuses its MLflow
    run. ``loop``: the trials' training-worker loop (default the project's; bench/sweep_scale.py passes
    a stand-in that reports like it, to measure what the sweep costs around the training).
    ``audit``: the champion is the first qualifying trial (in the rule's order) that passes ``unlearn audit``.
    """
    if if_exists not in ("error", "resume"):
        raise ConfigError(f"if_exists: expected 'error' or 'resume', got {if_exists!r}")
    if resume_dir is not None:
        sweep_dir = Path(resume_dir).resolve()
        if not (sweep_dir / STATE_FILE).is_file():
            raise ConfigError(f"--resume {sweep_dir}: not a sweep folder (no {STATE_FILE})")
        state = SweepState.load(sweep_dir)
        cfg, rule = state.cfg, state.champion_rule
        copy = sweep_dir / SPACE_COPY  # the space as it was when the sweep started
        space, objectives = load_sweep_space(copy if copy.is_file() else state.space_path)
        log(f"resuming sweep {state.sweep_name} from {sweep_dir}")
    else:
        cfg = _resolved_cfg(cfg)
        rule = champion_rule or ChampionRule()
        space, objectives = load_sweep_space(space_path)
        search = search or space.search or "random"
        check_options(objectives, scheduler, search)
        if cfg.train.launcher == "in_process" and workers_per_trial != 1:
            raise ConfigError(
                f"train.launcher=in_process runs a trial's training in its own actor, as one worker; "
                f"--workers-per-trial {workers_per_trial} needs train.launcher=ray_train (or auto)"
            )
        state = SweepState.new(
            space_path,
            cfg,
            num_samples=num_samples or space.num_samples,
            scheduler=scheduler,
            search=search,
            max_concurrent=max_concurrent,
            workers_per_trial=workers_per_trial,
            rule=rule,
            max_failures=max_failures,
        )
        sweep_dir = Path(storage_dir(cfg.workdir)) / state.sweep_name
        if (sweep_dir / STATE_FILE).is_file() and tune.Tuner.can_restore(str(sweep_dir)):
            if if_exists == "resume":
                log(f"[cached] sweep {sweep_dir.name} exists: resuming it (finished trials are kept)")
                return run_sweep(
                    space_path, cfg, resume_dir=sweep_dir, audit=audit, log=log, table=table, loop=loop
                )
            raise ConfigError(
                f"sweep {sweep_dir} exists (same space, config and options): "
                f"continue it with --resume {sweep_dir}, or change the config"
            )
        if (sweep_dir / STATE_FILE).is_file():  # a sweep that stopped before Tune saved anything
            state.parent_run_id = SweepState.load(sweep_dir).parent_run_id

    ws = Workspace(Path(cfg.workdir))
    state.tracking_uri = uri = state.tracking_uri or tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    parent = state.parent_run_id = open_parent(uri, exp_id, state, space)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not (sweep_dir / SPACE_COPY).is_file():
        shutil.copyfile(state.space_path, sweep_dir / SPACE_COPY)
    state.save(sweep_dir)
    log(
        f"sweep {state.sweep_name}: {state.num_samples} trial(s) of {space.method}, scheduler "
        f"{state.scheduler}, search {state.search}; MLflow parent run {parent}; folder {sweep_dir}"
    )
    client = MlflowClient(uri)
    with tracking.run_status(uri, parent):  # FINISHED, FAILED (error tagged) or KILLED, like every run
        inputs = _prepare_first(space, cfg, ws, uri, log)
        # The starting model is evaluated like the trials' final models (the space's base may set
        # train.eval_max_samples): the champion rule compares the two.
        eval_samples = int(space.base.get("train.eval_max_samples", cfg.train.eval_max_samples))
        before = evaluate_cached(inputs.init_model, inputs.shards, ws.results, eval_samples)["metrics"]
        if not state.before_logged:
            tracking.log_metrics(uri, parent, {f"before.{k}": v for k, v in before.items()})
            state.before_logged = True
            state.save(sweep_dir)
        grid = _fit(
            space, objectives, cfg, state, sweep_dir, inputs, uri, exp_id, resume_dir is not None, log, loop
        )
        trials = close_unfinished(client, collect_trials(grid, sweep_dir / "train"), exp_id, parent)
        pareto, artifacts = write_report(space, trials, before, sweep_dir, client, parent, log, table=table)
        auditor = _auditor(cfg, parent, log) if audit else None
        champion = pick_champion(
            space, objectives, cfg, trials, before, rule, uri, parent, log, auditor=auditor
        )
    return SweepResult(
        sweep_dir=sweep_dir,
        sweep_name=state.sweep_name,
        parent_run_id=parent,
        before=before,
        trials=trials,
        pareto=pareto,
        artifacts=artifacts,
        champion=champion,
    )


def _probe_payload(space: SearchSpace, cfg: RunConfig, log: Callable[..., None]) -> dict[str, Any] | None:
    """The in-training audit probe, when the objective reads one of its ``audit_probe.*`` figures."""
    from pipelines.audit.probe import probe_payload, wants_probe

    if not wants_probe(space.objective.terms, space.objective.metric):
        return None
    return probe_payload(cfg.workdir, log=log)


def _auditor(cfg: RunConfig, parent: str, log: Callable[..., None]) -> Callable[[str], dict[str, Any]]:
    """``unlearn audit`` of a trial's model against the workdir's retrained reference, as a child run."""
    from pipelines.audit import audit_config, run_audit

    ref_cfg = audit_config(cfg.workdir)

    def audit_trial(model_dir: str) -> dict[str, Any]:
        return run_audit(model_dir, ref_cfg, parent_run_id=parent, log=log, table=False)

    return audit_trial


def _fit(
    space: SearchSpace,
    objectives: Objectives,
    cfg: RunConfig,
    state: SweepState,
    sweep_dir: Path,
    inputs: PreparedInputs,
    uri: str,
    exp_id: str,
    resuming: bool,
    log: Callable[..., None],
    loop: WorkerLoop | None = None,
) -> Any:
    workers = state.workers_per_trial
    ctx = TrialContext(
        space=space,
        cfg=_shared_cfg(cfg, inputs).model_dump(),
        workers_per_trial=workers,
        tracking_uri=uri,
        experiment_id=exp_id,
        parent_run_id=state.parent_run_id or "",
        sweep_name=state.sweep_name,
        train_storage=str(sweep_dir / "train"),
        loop=loop,
        resuming=resuming,
        tune_keys=objectives.metrics if objectives.multi else (),
        audit_probe=_probe_payload(space, cfg, log),
    )
    most = autoscaler_max_resources()
    cluster = cluster_capacity(ray.cluster_resources(), most)
    in_process = resolve_launcher(cfg.train.model_copy(update={"num_workers": workers})) == "in_process"
    # An in-process trial's actor is its one worker: it holds the worker's resources, and no Train
    # workers come on top (sized as a driver with 0 workers).
    if in_process:
        driver = in_process_trial_resources(cfg, cluster, cpu_less_node=has_cpu_less_node())
        sizing, held_workers = sizing_resources(cfg, driver), 0
    else:
        driver = driver_resources(cfg, workers, cluster)
        sizing, held_workers = driver, workers
    trainable = tune.with_resources(tune.with_parameters(sweep_trial, ctx=ctx), driver)
    if resuming and tune.Tuner.can_restore(str(sweep_dir)):
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_errored=True)
    else:
        concurrent = state.max_concurrent or default_max_concurrent(cfg, held_workers, sizing, cluster)
        if not state.max_concurrent and (
            note := capacity_note(cfg, held_workers, sizing, cluster, most is not None)
        ):
            log(note)
        each = (
            f"its training loop in the trial's actor (in process), which holds {driver}"
            if in_process
            else f"driver {driver} + {workers} Ray Train worker(s) x "
            f"{cfg.train.cpus_per_worker} CPU{' + 1 GPU' if cfg.train.use_gpu else ''}"
        )
        log(f"up to {concurrent} concurrent trial(s); each: {each}")
        if note := tracking.concurrency_note(uri, concurrent):
            log(note)
        tuner = tune.Tuner(
            trainable,
            param_space=tune_param_space(space, grid_as_choice=state.search == "optuna"),
            tune_config=build_tune_config(
                objectives,
                space,
                cfg,
                num_samples=state.num_samples,
                scheduler=state.scheduler,
                search=state.search,
                max_concurrent=concurrent,
                reuse_actors=in_process,
            ),
            run_config=tune.RunConfig(
                name=sweep_dir.name,
                storage_path=str(sweep_dir.parent),
                failure_config=tune.FailureConfig(max_failures=state.max_failures),
                callbacks=[*sweep_callbacks(state.num_samples), ReleaseEndedTrialGroups()],
            ),
        )
    grid = tuner.fit()
    release_groups((r.metrics or {}).get(GROUP_KEY) for r in grid)  # also after a resumed sweep
    return grid
