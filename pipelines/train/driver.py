"""The one training-job driver: train (Ray Train), export the final model, evaluate it, all inside one
MLflow run that ends FINISHED, FAILED or KILLED as it really ended.

``unlearn finetune``, ``unlearn run`` and every sweep trial describe their job as a ``TrainingJob``
and call :func:`run_training_job`; this is Ray Train V2's Train/Tune interop pattern: one driver
function that builds and fits a ``TorchTrainer``, called directly for a single run and from the
Tune trainable for a sweep trial.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.evaluate import evaluate
from pipelines.shards import load_manifest, load_shard_rows
from pipelines.train.trainer import TrainJob, export_final_model, fit
from unlearn_core.config import RunConfig
from unlearn_core.eval.protocols import resolve_protocol
from unlearn_core.eval.runner import select_eval_rows

Evaluator = Callable[..., dict[str, Any]]


def in_training_eval_rows(shards: Path, cfg: RunConfig) -> list[dict[str, Any]] | None:
    """The rows evaluated every ``train.eval_every`` steps (None when off)."""
    if not cfg.train.eval_every:
        return None
    return in_training_selection(load_shard_rows(shards), cfg.train.eval_max_samples)


def in_training_selection(rows: list[dict[str, Any]], eval_max_samples: int) -> list[dict[str, Any]]:
    """A quarter of the final evaluation's sample count per (split, task), at least 4, so intermediate
    reports stay cheap; the (split, task) pairs are the final evaluation's (every converted task under a
    benchmark protocol, as ``evaluate`` selects), so no task is missing from the ``eval/*`` curves."""
    every_task = resolve_protocol(rows).is_benchmark
    return select_eval_rows(rows, max_per_group=max(4, eval_max_samples // 4), every_task=every_task)


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

    def train_job(self) -> TrainJob:
        return TrainJob(
            cfg=self.cfg.model_dump(),
            mode=self.mode,
            processor_dir=self.processor_dir,
            init_model=self.init_model,
            image_size=int(load_manifest(self.shards)["config"]["image_size"]),
            eval_records=in_training_eval_rows(self.shards, self.cfg),
            mask_path=self.mask_path,
        )


def run_training_job(
    job: TrainingJob,
    *,
    tracking_uri: str,
    run_id: str,
    live: tracking.MlflowReportCallback | None = None,
    evaluator: Evaluator = evaluate,
    derived: Callable[[dict[str, float]], dict[str, float]] | None = None,
    settle_failure: bool = True,
    log: Callable[..., None] = print,
) -> dict[str, Any]:
    """Fit, export, evaluate and log ``job`` on the MLflow run ``run_id``, which this function ends.

    ``live``: the callback that logs every training report to the run (default: ``train/<key>``,
    ``eval/<metric>``). ``evaluator(model_dir, shards, max_per_group=...)`` runs the final evaluation
    (a sweep trial runs it outside its placement group). ``settle_failure=False`` leaves a failed
    run's final status to the caller (see ``tracking.run_status``). Returns the model folder, the
    final metrics and report, and the logged model (and its registered version) when ``job.log_model``.
    """
    live = live or tracking.MlflowReportCallback(tracking_uri, run_id)
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    with tracking.run_status(tracking_uri, run_id, settle_failure=settle_failure):
        try:
            result = fit(
                job.train_job(),
                job.datasets,
                name=job.name,
                storage_path=job.storage_path,
                callbacks=[live, *job.callbacks],
            )
        finally:
            live.flush()  # values the controller could not send (tracking server down) come back here
        fit_s = lap()
        model_dir = export_final_model(result, job.out_dir)
        export_s = lap()
        log(f"saved {model_dir}; evaluating")
        report = evaluator(model_dir, job.shards, max_per_group=job.cfg.train.eval_max_samples)
        eval_s = lap()
        job.eval_path.parent.mkdir(parents=True, exist_ok=True)
        job.eval_path.write_text(json.dumps(report, indent=1))
        metrics = dict(report["metrics"])
        if derived is not None:
            metrics.update(derived(metrics))
        step = job.cfg.train.steps
        client = MlflowClient(tracking_uri)
        if not _logged_at(client, run_id, next(iter(metrics), ""), step):  # a re-run trial logs no step twice
            tracking.log_metrics(tracking_uri, run_id, metrics, step=step)
        client.log_artifact(run_id, str(job.eval_path))
        sha = tracking.weights_sha256(model_dir)
        client.set_tag(run_id, "model_dir", str(model_dir))
        client.set_tag(run_id, tracking.SHA_TAG, sha)
        logged = (
            tracking.log_model(run_id, model_dir, job.register_as, tracking_uri=tracking_uri)
            if job.log_model
            else {}
        )
        timing = phase_times(result.metrics or {}, fit_s, export_s, eval_s, lap())
        if not _logged_at(client, run_id, "time/job_s", step):  # a re-run trial keeps its first times
            tracking.log_metrics(tracking_uri, run_id, timing, step=step)
    return {
        "run_id": run_id,
        "model_dir": str(model_dir),
        "metrics": metrics,
        "report": report,
        "step": step,
        tracking.SHA_TAG: sha,
        "registered_model": job.register_as if logged else None,
        "timing": timing,
        **logged,
    }


def phase_times(
    last_report: dict[str, Any], fit_s: float, export_s: float, eval_s: float, log_s: float
) -> dict[str, float]:
    """Wall seconds of the job's phases (``time/*``, logged on the run): ``stepping_s`` is the training
    loop itself (steps and in-training evaluations, from the worker's last ``steps_per_s``), and
    ``train_startup_s`` the rest of the fit (Ray Train controller and workers, model load, the
    first batches, the final checkpoint). What is not stepping is the job's fixed cost."""
    step, rate = float(last_report.get("step", 0.0)), float(last_report.get("steps_per_s", 0.0))
    stepping = min(step / rate, fit_s) if rate > 0 else 0.0
    return {
        "time/fit_s": fit_s,
        "time/stepping_s": stepping,
        "time/train_startup_s": fit_s - stepping,
        "time/export_s": export_s,
        "time/eval_s": eval_s,
        "time/log_s": log_s,
        "time/job_s": fit_s + export_s + eval_s + log_s,
    }


def _logged_at(client: MlflowClient, run_id: str, key: str, step: int) -> bool:
    return bool(key) and any(m.step == step for m in client.get_metric_history(run_id, key))
