"""MLflow: tracking URI and experiments, a run's truthful end, live metrics from Ray Train, the registry.

Names load on first use (PEP 562): the Ray Train controller unpickles ``MlflowReportCallback`` and
imports this package to do so; eager imports here would load torch and transformers into it
(``weights_sha256``) and add seconds to every job's start.
"""

from __future__ import annotations

from pipelines.lazy import lazy_getattr

_HOMES = {
    "log_evaluation": "pipelines.tracking.eval_run",
    **dict.fromkeys(
        (
            "ERROR_TAG",
            "artifact_root",
            "ensure_experiment",
            "log_metrics",
            "now_ms",
            "open_run",
            "resolve_tracking_uri",
            "run_status",
        ),
        "pipelines.tracking.experiments",
    ),  # fmt: skip
    "MlflowReportCallback": "pipelines.tracking.live",
    **dict.fromkeys(
        ("SHA_TAG", "audit_verdict_line", "log_model", "pull", "set_alias"), "pipelines.tracking.models"
    ),
    "weights_sha256": "unlearn_core.models.loading",
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_getattr(__name__, _HOMES, globals())
