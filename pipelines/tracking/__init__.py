"""MLflow: tracking URI and experiments, a run's truthful end, live metrics from Ray Train, the registry."""

from pipelines.tracking.eval_run import log_evaluation
from pipelines.tracking.experiments import (
    ERROR_TAG,
    artifact_root,
    ensure_experiment,
    log_metrics,
    now_ms,
    open_run,
    resolve_tracking_uri,
    run_status,
)
from pipelines.tracking.live import MlflowReportCallback
from pipelines.tracking.models import SHA_TAG, log_model, pull, set_alias
from unlearn_core.models.loading import weights_sha256

__all__ = [
    "ERROR_TAG", "SHA_TAG", "MlflowReportCallback", "artifact_root", "ensure_experiment", "log_evaluation",
    "log_metrics", "log_model",
    "now_ms", "open_run", "pull", "resolve_tracking_uri", "run_status", "set_alias", "weights_sha256",
]  # fmt: skip
