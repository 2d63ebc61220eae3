"""`unlearn eval --track`: one evaluation as its own MLflow run, so a benchmark's numbers can be compared
in the MLflow UI without training anything (`unlearn run` logs the same names on its training run)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines.tracking.experiments import ensure_experiment, log_metrics, open_run, run_status
from unlearn_core.config import TrackingConfig


def log_evaluation(
    report: Mapping[str, Any],
    report_path: str | Path,
    *,
    tracking: TrackingConfig,
    tracking_uri: str,
    workdir: str | Path,
    params: Mapping[str, Any],
) -> str:
    """Log ``report``'s metrics under their report names and ``report_path`` (the JSON) as an artifact on
    a new run (tag ``job=eval``) of ``tracking.experiment``; the run ends FINISHED, or FAILED on an
    error. Returns the run id."""
    experiment_id = ensure_experiment(tracking_uri, tracking.experiment, workdir)
    run_id = open_run(
        tracking_uri,
        experiment_id,
        run_name=f"eval-{Path(str(params.get('model', 'model'))).name}",
        tags={"job": "eval", "protocol": str(report.get("protocol", ""))},
        params=params,
    )
    with run_status(tracking_uri, run_id):
        log_metrics(tracking_uri, run_id, report["metrics"])
        MlflowClient(tracking_uri).log_artifact(run_id, str(report_path))
    return run_id
