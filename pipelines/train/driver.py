"""The one training-job driver: train (Ray Train), export the final model, evaluate it, all inside one
MLflow run that ends FINISHED, FAILED or KILLED as it really ended.

``unlearn finetune``, ``unlearn run`` and every sweep trial describe their job as a ``TrainingJob``
and call :func:`run_training_job`; this is Ray Train V2's Train/Tune interop pattern: one driver
function that builds and fits a ``TorchTrainer``, called directly for a single run and from the
Tune trainable for a sweep trial.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.evaluate import build_report, evaluate, evaluation_rows
from pipelines.phase_clock import PhaseClock
from pipelines.preflight import earlier_model
from pipelines.provenance import write_provenance
from pipelines.shards import load_manifest, load_shard_rows
from pipelines.train.trainer import WorkerLoop, WorkerSpec, export_final_model, final_outputs, fit
from unlearn_core import outputs
from unlearn_core.config import RunConfig, resolve_launcher
from unlearn_core.eval.protocols import resolve_protocol
from unlearn_core.eval.runner import select_eval_rows

Evaluator = Callable[..., dict[str, Any]]


def in_training_eval_rows(rows: list[dict[str, Any]], cfg: RunConfig) -> list[dict[str, Any]] | None:
    """The rows (of the shard ``rows``) evaluated every ``train.eval_every`` steps (None when off)."""
    if not cfg.train.eval_every:
        return None
    return in_training_selection(rows, cfg.train.eval_max_samples)


def in_training_selection(rows: list[dict[str, Any]], eval_max_samples: int) -> list[dict[str, Any]]:
    """A quarter of the final evaluation's sample count per (split, task), at least 4, so intermediate
    reports stay cheap; the (split, task) pairs are the final evaluation's (every converted task under a
    benchmark protocol, as ``evaluate`` selects), so no task is missing from the ``eval/*`` curves."""
    proto = resolve_protocol(rows)
    return select_eval_rows(
        rows,
        max_per_group=max(4, eval_max_samples // 4),
        every_task=proto.is_benchmark,
        few_shot=proto.few_shot,
    )


@dataclass
class TrainingJob:
    """One training job as every entry point describes it (plain data; the driver does the rest)."""

    cfg: RunConfig
    mode: str  # "finetune" | "unlearn"
    shards: Path
    init_model: str  # "tiny-llava" (built from scratch) or a local HF folder
    processor_dir: str
    datasets: dict[str, Any]  # Ray Datasets by stream name
    out_dir: Path  # the final HF model folder
    eval_path: Path  # the final evaluation, as JSON
    name: str  # the Ray Train run name
    storage_path: str
    mask_path: str | None = None
    log_model: bool = False  # log the final model on the run as an ``mlflow.pyfunc`` model
    register_as: str | None = None  # ... and register it under this name
    callbacks: list[Any] = field(default_factory=list)  # extra Ray Train callbacks (a sweep's Tune bridge)
    loop: WorkerLoop | None = None  # the workers' loop; None: the project's (``trainer.run_worker``)
    audit_probe: dict[str, Any] | None = None  # the in-training audit probe (WorkerSpec.audit_probe)

    def worker_spec(
        self,
        final_eval: tuple[list[dict[str, Any]], Any] | None = None,
        shard_rows: list[dict[str, Any]] | None = None,
    ) -> WorkerSpec:
        """What each training worker receives (``train_loop_config``)."""
        rows, proto = final_eval or (None, None)
        return WorkerSpec(
            cfg=self.cfg.model_dump(),
            mode=self.mode,
            processor_dir=self.processor_dir,
            init_model=self.init_model,
            image_size=int(load_manifest(self.shards)["config"]["image_size"]),
            eval_records=in_training_eval_rows(
                load_shard_rows(self.shards) if shard_rows is None else shard_rows, self.cfg
            ),
            mask_path=self.mask_path,
            final_eval_records=rows,
            final_eval_protocol=proto.name if proto is not None else "synthetic",
            audit_probe=self.audit_probe,
        )


@dataclass(frozen=True)
class JobResult:
    """A finished training job: its run, exported model, final evaluation and where the time went."""

    run_id: str
    model_dir: Path
    metrics: dict[str, float]  # the final evaluation's (plus ``derived``, e.g. a sweep's objective)
    report: dict[str, Any]  # the final evaluation's JSON (metrics, counts, per-sample rows)
    step: int  # the step the final metrics are logged at
    weights_sha256: str
    timing: dict[str, float]  # ``time/*``: see ``phase_times``
    registered_model: str | None = None  # the registry name, when the model was logged and registered
    model_uri: str | None = None  # the logged ``mlflow.pyfunc`` model, when ``job.log_model``
    version: str | None = None  # its registered version


def run_training_job(
    job: TrainingJob,
    *,
    tracking_uri: str,
    run_id: str,
    live: tracking.MlflowReportCallback | None = None,
    evaluator: Evaluator = evaluate,
    derived: Callable[[dict[str, float]], dict[str, float]] | None = None,
    settle_failure: bool = True,
    new_run: bool = False,
    log: Callable[..., None] = print,
) -> JobResult:
    """Fit, export, evaluate and log ``job`` on the MLflow run ``run_id``, which this function ends.

    ``live``: the callback that logs every training report to the run (default: ``train/<key>``,
    ``eval/<metric>``). The final evaluation is generated by the training workers after the last step
    (``WorkerSpec.final_eval_records``) and scored here; ``evaluator(model_dir, shards, max_per_group=...)``
    evaluates the exported model instead when the last checkpoint has no outputs (a run resumed from a
    checkpoint of an older version; a sweep trial runs it outside its placement group). ``settle_failure=False`` leaves a failed
    run's final status to the caller (see ``tracking.run_status``). ``new_run``: the run was just opened
    for this job, so nothing is checked for values logged before (a re-run trial's run is checked, so
    that it logs no step twice).
    """
    live = live or tracking.MlflowReportCallback(
        tracking_uri,
        run_id,
        background=resolve_launcher(job.cfg.train) == "in_process",  # reports from the loop itself
        outage_wait_s=tracking.OUTAGE_WAIT_S,
    )
    clock = PhaseClock()
    with tracking.run_status(tracking_uri, run_id, settle_failure=settle_failure):
        # where the model goes, checked before training rather than after (unlearn_core.outputs)
        outputs.check_folder(job.out_dir, "model folder", force=True, recognise=earlier_model)
        with clock.phase("fit"):
            shard_rows = load_shard_rows(job.shards)  # read once: both evaluations select from them
            final_rows, proto = evaluation_rows(
                job.shards, job.cfg.train.eval_max_samples, all_rows=shard_rows
            )
            try:
                result = fit(
                    job.worker_spec(final_eval=(final_rows, proto), shard_rows=shard_rows),
                    job.datasets,
                    name=job.name,
                    storage_path=job.storage_path,
                    callbacks=[live, *job.callbacks],
                    loop=job.loop,
                )
            finally:
                live.flush()  # values the controller could not send (tracking server down) come back here
        with clock.phase("export"):
            model_dir = export_final_model(result, job.out_dir)
            write_provenance(
                model_dir,
                shards_fingerprint=load_manifest(job.shards)["fingerprint"],
                mode=job.mode,
                init_model=job.init_model,
                run_id=run_id,
            )
        with clock.phase("eval"):
            generated = final_outputs(result)
            if generated is not None:
                log(f"saved {model_dir} (final evaluation generated by the workers: {len(final_rows)} rows)")
                report = build_report(final_rows, generated["outputs"], proto)
                report["metrics"].update(generated.get("extra_metrics") or {})
            else:
                log(f"saved {model_dir}; evaluating")
                report = evaluator(model_dir, job.shards, max_per_group=job.cfg.train.eval_max_samples)
        step = job.cfg.train.steps
        client = MlflowClient(tracking_uri)
        with clock.phase("log"):
            sha = tracking.weights_sha256(model_dir)
            tags = {"model_dir": str(model_dir), tracking.SHA_TAG: sha}
            metrics = _log_outcome(tracking_uri, run_id, job, report, step, derived, tags, new_run)
            logged = (
                tracking.log_model(run_id, model_dir, job.register_as, tracking_uri=tracking_uri)
                if job.log_model
                else {}
            )
        timing = phase_times(result.metrics or {}, clock.seconds)
        if new_run or not _logged_at(client, run_id, "time/job_s", step):  # a re-run keeps its first times
            tracking.log_metrics(tracking_uri, run_id, timing, step=step)
    return JobResult(
        run_id=run_id,
        model_dir=model_dir,
        metrics=metrics,
        report=report,
        step=step,
        weights_sha256=sha,
        timing=timing,
        registered_model=job.register_as if logged else None,
        model_uri=logged.get("model_uri"),
        version=logged.get("version"),
    )


def _log_outcome(
    tracking_uri: str,
    run_id: str,
    job: TrainingJob,
    report: dict[str, Any],
    step: int,
    derived: Callable[[dict[str, float]], dict[str, float]] | None,
    tags: dict[str, str],
    new_run: bool,
) -> dict[str, float]:
    """The final evaluation on the run: its JSON as an artifact, its metrics (plus ``derived``) at
    ``step`` with ``tags`` in the same request; returns those metrics."""
    job.eval_path.parent.mkdir(parents=True, exist_ok=True)
    job.eval_path.write_text(json.dumps(report, indent=1))
    metrics = dict(report["metrics"])
    if derived is not None:
        metrics.update(derived(metrics))
    client = MlflowClient(tracking_uri)
    first = new_run or not _logged_at(client, run_id, next(iter(metrics), ""), step)  # no step twice
    tracking.log_metrics(tracking_uri, run_id, metrics if first else {}, step=step, tags=tags)
    client.log_artifact(run_id, str(job.eval_path))
    return metrics


def phase_times(last_report: dict[str, Any], seconds: dict[str, float]) -> dict[str, float]:
    """Wall seconds of the job's phases (``time/*``, logged on the run) from the ``PhaseClock``'s
    ``fit``, ``export``, ``eval`` and ``log``: ``stepping_s`` is the training loop itself (steps and
    in-training evaluations, from the worker's last ``steps_per_s``), and ``train_startup_s`` the rest
    of the fit (Ray Train controller and workers, model load, the first batches, the final
    checkpoint); ``eval_s`` the final evaluation (the workers' generation, ``final_eval_s`` of the
    last report, plus scoring here). What is not stepping is the job's fixed cost."""
    fit_s, export_s, eval_s, log_s = (seconds[k] for k in ("fit", "export", "eval", "log"))
    step, rate = float(last_report.get("step", 0.0)), float(last_report.get("steps_per_s", 0.0))
    stepping = min(step / rate, fit_s) if rate > 0 else 0.0
    generating = min(float(last_report.get("final_eval_s", 0.0)), fit_s - stepping)
    return {
        "time/fit_s": fit_s,
        "time/stepping_s": stepping,
        "time/train_startup_s": fit_s - stepping - generating,
        "time/export_s": export_s,
        "time/eval_s": generating + eval_s,
        "time/log_s": log_s,
        "time/job_s": fit_s + export_s + eval_s + log_s,
    }


def _logged_at(client: MlflowClient, run_id: str, key: str, step: int) -> bool:
    return bool(key) and any(m.step == step for m in client.get_metric_history(run_id, key))
