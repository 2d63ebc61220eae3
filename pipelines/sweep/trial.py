"""One sweep trial, the Tune trainable: the training-job driver on the trial's config, its MLflow child
run, and the Ray Train callbacks (``pipelines.sweep.callbacks``) that forward live curves to MLflow and
evaluations to Tune (for ASHA)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from pipelines import tracking
from pipelines.evaluate import evaluate
from pipelines.phase_clock import PhaseClock, process_age_s
from pipelines.sweep.callbacks import EvalToTune, LiveCurves
from pipelines.sweep.train_groups import TrainGroupReporter
from pipelines.sweep.tune_config import OBJECTIVE, tune_report
from pipelines.train.driver import run_training_job
from pipelines.train.trainer import WorkerLoop
from pipelines.train.unlearn import PreparedInputs, prepare_inputs, unlearn_job
from pipelines.workspace import NotCached, Workspace
from unlearn_core.config import RunConfig, mlflow_params, with_launcher_resolved, with_overrides
from unlearn_core.search_space import SearchSpace, objective_value, trial_config


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
    loop: WorkerLoop | None = None  # the workers' loop; None: the project's (a bench passes a stand-in)
    resuming: bool = False  # a resumed sweep: trials may have runs from before
    tune_keys: tuple[
        str, ...
    ] = ()  # report keys Tune reads beside ``tune_config.TUNE_KEYS`` (several objectives)
    audit_probe: dict[str, Any] | None = None  # the in-training audit probe (pipelines.audit.probe)


RUN_MARKER = "mlflow_run_id"  # in the trial's Train run folder: its MLflow run, for a retry or resume


def _child_run(ctx: TrialContext, name: str, cfg: RunConfig) -> tuple[str, int | None, dict[str, str]]:
    """The trial's MLflow run under the parent, the last step it has logged (None for a new run) and
    the params it holds: a trial that starts again (a retry, a resumed sweep) reuses its run and logs
    no step twice. The run's id is kept in the trial's Train run folder (on the sweep's storage, where
    its checkpoints are), so a new trial costs no search over the sweep's runs; a resumed sweep that
    started before trials kept it finds the run by its tags."""
    client = MlflowClient(ctx.tracking_uri)
    marker = Path(ctx.train_storage) / name / RUN_MARKER
    run_id = marker.read_text().strip() if marker.is_file() else None
    if run_id is None and ctx.resuming:
        found = client.search_runs(
            [ctx.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.trial_name = '{name}'",
        )
        run_id = found[0].info.run_id if found else None
    if run_id is not None:
        run = client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
        steps = [int(m.step) for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
        return run_id, max(steps, default=None), dict(run.data.params)
    # unset values (None) are logged once resolved (_log_resolved_params): MLflow params are
    # write-once, and a trial's run would keep "None" where the trial uses a value
    params = {k: v for k, v in mlflow_params(cfg).items() if v != "None"}
    run_id = tracking.open_run(
        ctx.tracking_uri,
        ctx.experiment_id,
        run_name=f"{ctx.sweep_name}-{name}",
        tags={
            "mlflow.parentRunId": ctx.parent_run_id,
            "trial_name": name,
            "job": "sweep-trial",
            "method": cfg.method.name,
            "sweep": ctx.sweep_name,
        },
        params=params,
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_id)
    return run_id, None, params


def _log_resolved_params(client: MlflowClient, run_id: str, cfg: RunConfig, have: dict[str, str]) -> None:
    """The resolved params the trial's run does not have yet (``have``; MLflow params are write-once)."""
    new = [mlflow.entities.Param(k, v) for k, v in mlflow_params(cfg).items() if k not in have]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i : i + 100])


def _outside_trial_group(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a 0-CPU Ray task outside the trial's placement group.

    Tune runs the driver function in a placement group that captures its child tasks; Ray Data and
    Ray tasks started from there (evaluation, PUBG teacher cache, saliency mask) would wait forever for
    the driver's small bundle. From this task they use the cluster's free resources instead.
    """
    task = ray.remote(num_cpus=0, max_retries=0)(fn).options(scheduling_strategy="DEFAULT")
    return ray.get(task.remote(*args, **kwargs))


def _prepare_locked(cfg: RunConfig, ws: Workspace, uri: str) -> PreparedInputs:
    """``prepare_inputs`` under a workdir file lock: trials needing the same new cache never race."""
    from filelock import FileLock

    with FileLock(str(ws.root / ".sweep-prepare.lock")):
        return prepare_inputs(cfg, ws, uri, log=print)


def sweep_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial: prepared inputs, the child run, then the training-job driver (train, export, eval).

    A failed trial's run gets its error tagged here; its final status (FAILED, or KILLED when the
    scheduler stopped it) is set by the sweep driver once Tune says how the trial ended: a trial that
    ASHA stops can also raise here, and a status written from this side could land after that KILLED.
    """
    clock = PhaseClock()
    process_age = process_age_s()  # the actor's start-up, for the first trial it runs
    name = tune.get_context().get_trial_name()
    cfg = trial_config(ctx.space, config, RunConfig.model_validate(ctx.cfg))
    cfg = with_launcher_resolved(with_overrides(cfg, {"train.num_workers": ctx.workers_per_trial}))
    ws = Workspace(Path(cfg.workdir))
    with clock.phase("trial_run"):
        run_id, logged_through, params = _child_run(ctx, name, cfg)
    with tracking.run_status(ctx.tracking_uri, run_id, settle_failure=False, finish=False):
        with clock.phase("trial_inputs"):  # teacher cache, mask (cached or made)
            try:  # everything cached (the usual case after the first trials): no extra process
                inputs = prepare_inputs(cfg, ws, ctx.tracking_uri, log=print, compute=False)
            except NotCached:
                inputs = _outside_trial_group(_prepare_locked, cfg, ws, ctx.tracking_uri)
        cfg = inputs.cfg  # every method param resolved (defaults, derived k, mask path)
        _log_resolved_params(MlflowClient(ctx.tracking_uri), run_id, cfg, params)
        extra = {"trial_name": name, "mlflow_run_id": run_id}
        with clock.phase("trial_streams"):  # the training streams read
            job = unlearn_job(
                cfg,
                inputs,
                out_dir=ws.models / "sweeps" / ctx.sweep_name / name,
                eval_path=ws.results / f"eval-{ctx.sweep_name}-{name}.json",
                name=name,
                storage_path=ctx.train_storage,
            )
        job.loop = ctx.loop
        job.audit_probe = ctx.audit_probe
        to_tune = EvalToTune(
            ctx.space.objective,
            dict(extra),
            in_process=cfg.train.launcher == "in_process",
            keep=ctx.tune_keys,
        )
        job.callbacks.append(to_tune)
        if cfg.train.launcher == "ray_train":  # the Train worker group's placement group, to release
            job.callbacks.append(TrainGroupReporter(to_tune.extra))
    out = run_training_job(
        job,
        tracking_uri=ctx.tracking_uri,
        run_id=run_id,
        settle_failure=False,
        new_run=logged_through is None and not ctx.resuming,
        live=LiveCurves(
            ctx.tracking_uri,
            run_id,
            ctx.space.objective,
            logged_through,
            background=cfg.train.launcher == "in_process",  # its reports come from the training loop
        ),
        evaluator=lambda *a, **kw: _outside_trial_group(evaluate, *a, **kw),
        derived=lambda metrics: _objective_metrics(ctx.space, metrics),
    )
    report = tune_report(
        {
            **out.metrics,
            "step": float(out.step),
            "final": 1,
            "model_dir": str(out.model_dir),
            tracking.SHA_TAG: out.weights_sha256,
            **out.timing,
            **clock.metrics(),
            "time/trial_s": clock.elapsed(),  # + inputs, the child run, Tune's report
            "time/process_age_s": process_age,
            **extra,
        },
        keep=ctx.tune_keys,
    )
    tune.report(report)


def _objective_metrics(space: SearchSpace, metrics: Mapping[str, float]) -> dict[str, float]:
    """``objective`` (and the space's objective metric, when it is a weighted sum of terms)."""
    obj = objective_value(space.objective, metrics)
    return {OBJECTIVE: obj, **({space.objective.metric: obj} if space.objective.terms else {})}
