"""`unlearn audit`: every attack on a model and on the retrained reference, the verdict, an MLflow run.

The reference's side of the attacks depends only on its weights, the shards and the attack settings:
it is computed once and kept in ``WORKDIR/audit/`` (a second audit, or a sweep auditing its trials,
pays for the audited model only).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.audit.match import check_model_matches
from pipelines.audit.reference import ensure_reference
from pipelines.workspace import Workspace
from unlearn_core.config import RunConfig

AUDIT_DIR = "audit"
CLEAR_ROWS = 300  # rows per (split, task) of CLEAR's forget quality: its config/mm/eval.yaml ds_size


def _side_key(reference_sha: str, fingerprint: str, settings: dict[str, Any]) -> str:
    from unlearn_core.audit import AUDIT_VERSION

    blob = json.dumps(
        {"reference": reference_sha, "shards": fingerprint, "settings": settings, "version": AUDIT_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_audit(
    model_dir: str | Path,
    cfg: RunConfig,
    *,
    exclude: str = "rows",
    settings: Any = None,
    thresholds: Any = None,
    check_data: bool = True,
    track: bool = True,
    parent_run_id: str | None = None,
    log: Callable[[str], None] = print,
    table: bool = True,
) -> dict[str, Any]:
    """Audit ``model_dir`` against the workdir's retrained reference (trained first when missing).

    Returns the report (the checks, the verdict, ``metrics``: the flat figures) with the audit's
    MLflow run id (``track``) and the paths of its JSON and table."""
    from pipelines import tracking
    from pipelines.audit.record import finish_audit_run, open_audit_run
    from unlearn_core import audit

    model_dir = Path(model_dir).resolve()
    ws = Workspace(Path(cfg.workdir))
    check_model_matches(model_dir, ws.shards, check_data=check_data)
    settings = settings or audit.AttackSettings()
    thresholds = thresholds or audit.Thresholds()
    if not track:
        return _audit(model_dir, cfg, ws, exclude, settings, thresholds, log, table)
    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    params = {**{f"attack.{k}": v for k, v in settings.as_dict().items()},
              **{f"threshold.{k}": v for k, v in thresholds.as_dict().items()},
              "reference_excludes": exclude, "model_dir": str(model_dir)}  # fmt: skip
    sha = tracking.weights_sha256(model_dir)
    run_id, audited = open_audit_run(uri, exp_id, model_dir, sha, params, parent_run_id)
    log(f"MLflow audit run {run_id}" + (f" (audited run {audited})" if audited else ""))
    with tracking.run_status(uri, run_id):
        report = _audit(model_dir, cfg, ws, exclude, settings, thresholds, log, table)
        report["run_id"] = run_id
        Path(report["paths"]["json"]).write_text(json.dumps(report, indent=1))
        finish_audit_run(
            uri, run_id, audited, report, Path(report["paths"]["json"]), Path(report["paths"]["table"])
        )
    return report


def _audit(model_dir: Path, cfg: RunConfig, ws: Workspace, exclude: str, settings: Any, thresholds: Any,
           log: Callable[[str], None], table: bool) -> dict[str, Any]:  # fmt: skip
    import torch

    from pipelines import tracking
    from pipelines.shards import load_manifest, load_shard_rows
    from unlearn_core import audit
    from unlearn_core.data.schema import SPLITS
    from unlearn_core.models.loading import load_model_and_processor

    t0 = time.perf_counter()
    fingerprint = load_manifest(ws.shards)["fingerprint"]
    ref_dir = ensure_reference(cfg, ws, fingerprint, exclude, log=log)
    check_model_matches(ref_dir, ws.shards)
    t_ref = time.perf_counter() - t0
    shard_rows = load_shard_rows(ws.shards, splits=SPLITS)
    rows = audit.select_audit_rows(shard_rows, seed=settings.seed)
    for note in rows.notes:
        log(f"note: {note}")
    torch.manual_seed(settings.seed)
    ref_sha, model_sha = tracking.weights_sha256(ref_dir), tracking.weights_sha256(model_dir)
    cache = ws.root / AUDIT_DIR / f"reference-side-{_side_key(ref_sha, fingerprint, settings.as_dict())}.json"
    if cache.is_file():
        ref_side = json.loads(cache.read_text())
        log(f"[cached] the reference's side of the attacks ({cache})")
    else:
        log(f"attacking the retrained reference {ref_dir.name} (once per reference, settings and data)")
        ref_model, ref_proc = load_model_and_processor(str(ref_dir), cfg.model)
        ref_side = audit.audit_side(
            ref_model, ref_proc, rows, settings, progress=audit.Progress(log), who="reference"
        )
        del ref_model
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(ref_side))
    log(f"attacking {model_dir}")
    model, proc = load_model_and_processor(str(model_dir), cfg.model)
    side = audit.audit_side(
        model, proc, rows, settings, reference_loss=ref_side.get("membership", {}).get("loss"),
        progress=audit.Progress(log),
    )  # fmt: skip
    report = audit.compare(side, ref_side, thresholds=thresholds, notes=rows.notes)
    report["benchmark"] = benchmark_figures(model_dir, ref_dir, ws, shard_rows, log)
    report["seconds"] = {
        **{f"model.{k}": v for k, v in side["seconds"].items()},
        **{f"reference.{k}": v for k, v in ref_side["seconds"].items()},
        "reference_training_or_lookup": t_ref,
        "total": time.perf_counter() - t0,
    }
    report.update(
        model={"dir": str(model_dir), "weights_sha256": model_sha},
        reference={
            "dir": str(ref_dir),
            "weights_sha256": ref_sha,
            "excludes": exclude,
            "side_cache": str(cache),
        },
        data={"shards": str(ws.shards), "fingerprint": fingerprint, "rows": rows.counts()},
    )
    report["metrics"] = {
        **audit.flat_metrics(report),
        **{f"audit.{k}": v for k, v in report["benchmark"].items() if v is not None},
    }
    out = ws.root / AUDIT_DIR / f"audit-{model_dir.name}-{model_sha[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, table_path = out.with_suffix(".json"), out.with_suffix(".md")
    text = audit.format_report(report)
    table_path.write_text(f"# Audit of {model_dir}\n\nreference: {ref_dir}\n\n```\n{text}\n```\n")
    json_path.write_text(json.dumps(report, indent=1))
    report["paths"] = {"json": str(json_path), "table": str(table_path)}
    if table:
        log(text)
    log(f"audit report: {json_path} ({time.perf_counter() - t0:.0f} s)")
    return report


def benchmark_figures(
    model_dir: Path,
    ref_dir: Path,
    ws: Workspace,
    shard_rows: list[dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The records' own reference-based metric: CLEAR's forget quality (the KS test of the forget truth
    ratios against the retain-only model's) with the retrained reference as that model."""
    from unlearn_core.eval.protocols import resolve_protocol

    if resolve_protocol(shard_rows).name != "clear":
        return {}
    from pipelines.evaluate import evaluate, evaluate_cached
    from pipelines.evaluate.cached import cache_path
    from pipelines.ray_env import ensure_ray

    ensure_ray()
    log("CLEAR records: forget quality against the retrained reference (`unlearn eval --reference-report`)")
    evaluate_cached(ref_dir, ws.shards, ws.results, CLEAR_ROWS)
    reference_json = cache_path(ref_dir, ws.shards, ws.results, CLEAR_ROWS)
    report = evaluate(model_dir, ws.shards, max_per_group=CLEAR_ROWS, reference_report=reference_json)
    return {"clear.forget_quality": report["metrics"].get("clear.forget_quality")}
