"""`unlearn audit`: does a model really forget? Attacks against the model and a retrained reference
(``unlearn_core.audit``), the reference trained and cached in the workdir, the verdict in MLflow."""

from __future__ import annotations

from pipelines.lazy import lazy_getattr

_HOMES = {
    "check_model_matches": "pipelines.audit.match",
    **dict.fromkeys(("audit_config", "ensure_reference", "reference_name"), "pipelines.audit.reference"),
    **dict.fromkeys(("PreparedReference", "prepare_reference", "run_audit"), "pipelines.audit.run"),
    **dict.fromkeys(("probe_payload", "wants_probe"), "pipelines.audit.probe"),
    **dict.fromkeys(("VERDICT_TAG", "AUDIT_TAGS"), "pipelines.audit.record"),
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_getattr(__name__, _HOMES, globals())
