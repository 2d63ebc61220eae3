"""An audit in MLflow: its own run (``tags.job = audit``) linked to the audited model's run, every figure a
metric, the report JSON and the one-page table as artifacts, and the verdict as tags on the audited run
and on every registered version of the same weights (so ``unlearn pull`` can print it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.provenance import read_provenance

VERDICT_TAG = "audit_verdict"
AUDIT_TAGS = (VERDICT_TAG, "audit_failed_checks", "audit_run_id", "audit_reference")


def audited_run(client: MlflowClient, experiment_id: str, model_dir: Path, sha: str) -> str | None:
    """The run that trained the model: its provenance's, else a run of the experiment tagged with its sha."""
    prov = read_provenance(model_dir) or {}
    run_id = prov.get("run_id")
    if run_id:
        try:
            client.get_run(run_id)
            return str(run_id)
        except Exception:  # noqa: BLE001 - a run of another store: fall back to the sha
            pass
    runs = client.search_runs(
        [experiment_id], f"tags.{tracking.SHA_TAG} = '{sha}' and tags.job != 'audit'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def open_audit_run(
    uri: str,
    experiment_id: str,
    model_dir: Path,
    sha: str,
    params: Mapping[str, Any],
    parent_run_id: str | None,
) -> tuple[str, str | None]:
    """A RUNNING audit run (its final status set by ``tracking.run_status``) and the audited run's id."""
    client = MlflowClient(uri)
    audited = audited_run(client, experiment_id, model_dir, sha)
    tags = {"job": "audit", "audited_model": str(model_dir), "audited_weights_sha256": sha}
    if audited:
        tags["audited_run_id"] = audited
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_id = tracking.open_run(
        uri, experiment_id, run_name=f"audit-{model_dir.name}", tags=tags, params=params
    )
    return run_id, audited


def verdict_tags(report: Mapping[str, Any], run_id: str) -> dict[str, str]:
    return {
        VERDICT_TAG: "pass" if report["pass"] else "fail",
        "audit_failed_checks": ",".join(report["failed"]) or "-",
        "audit_run_id": run_id,
        "audit_reference": Path(report["reference"]["dir"]).name,
    }


def finish_audit_run(
    uri: str, run_id: str, audited: str | None, report: Mapping[str, Any], json_path: Path, table_path: Path
) -> None:
    """Metrics, artifacts and the verdict tags (audit run, audited run, registered versions of the weights)."""
    client = MlflowClient(uri)
    tracking.log_metrics(uri, run_id, report["metrics"])
    client.log_artifact(run_id, str(json_path))
    client.log_artifact(run_id, str(table_path))
    tags = verdict_tags(report, run_id)
    for key, value in tags.items():
        if key != "audit_run_id":
            client.set_tag(run_id, key, value)
    if audited:
        for key, value in tags.items():
            client.set_tag(audited, key, value)
    for version in registered_versions(client, report["model"]["weights_sha256"]):
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)


def registered_versions(client: MlflowClient, sha: str) -> list[Any]:
    """Registered model versions whose weights are these (their ``weights_sha256`` tag)."""
    out = []
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            if (version.tags or {}).get(tracking.SHA_TAG) == sha:
                out.append(version)
    return out
