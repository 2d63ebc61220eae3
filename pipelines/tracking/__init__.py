"""MLflow: tracking URI and experiments, a run's truthful end, live metrics from Ray Train, the registry.

Names load on first use (PEP 562): the Ray Train controller unpickles ``MlflowReportCallback`` and
imports this package to do so; eager imports here would load torch and transformers into it
(``weights_sha256``) and add seconds to every job's start.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    **dict.fromkeys(("SHA_TAG", "log_model", "pull", "set_alias"), "pipelines.tracking.models"),
    "weights_sha256": "unlearn_core.models.loading",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
