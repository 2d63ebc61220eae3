"""`unlearn finetune`: the vanilla model that knows the people (the one later unlearned)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
import ray

from pipelines import tracking
from pipelines.evaluate import evaluate, load_shard_rows
from pipelines.preprocess import load_manifest
from pipelines.train import TrainJob, export_final_model, fit, storage_dir
from pipelines.workspace import Workspace, ensure_shards
from unlearn_core.config import RunConfig, mlflow_params
from unlearn_core.data.selection import in_stream
from unlearn_core.eval.report import format_table
from unlearn_core.eval.runner import select_eval_rows

TRAIN_SPLITS = ("forget", "retain")


# Streams whose shard files total less than this are materialized once in the object store before
# training: a forget set is a few hundred rows (a handful of batches per epoch), and re-reading and
# re-filtering the Parquet files at every epoch cost GA 4x its step time (bench/train_step.py).
MATERIALIZE_MAX_BYTES = int(os.environ.get("UNLEARN_MATERIALIZE_MAX_BYTES", 1 << 30))


def stream_dataset(
    shards: Path, stream: str, *, forget_dir: Path | None = None, task_weights: dict[str, int] | None = None
) -> ray.data.Dataset:
    """The rows of one training stream (see unlearn_core.data.selection) as a Ray Dataset.

    ``forget_dir`` replaces the forget split for the forget stream (PUBG: the teacher-annotated copy).
    Small streams (shard files under ``MATERIALIZE_MAX_BYTES``) are materialized; large ones stream.
    """
    if stream == "forget" and forget_dir is not None:
        paths = [str(forget_dir / "forget")]
    else:
        paths = [str(shards / s) for s in TRAIN_SPLITS if (shards / s).is_dir()]
    if not paths:
        raise FileNotFoundError(f"{shards}: none of the splits {TRAIN_SPLITS} has shards")

    weights = task_weights or {}

    def keep(batch: pa.Table) -> pa.Table:
        """Rows of this stream, each repeated by its task weight (default 1)."""
        pairs = zip(batch["split"].to_pylist(), batch["task"].to_pylist(), strict=True)
        idx = [i for i, (s, t) in enumerate(pairs) if in_stream(stream, s, t) for _ in range(weights.get(t, 1))]
        return batch.take(pa.array(idx, type=pa.int64()))

    ds = ray.data.read_parquet(paths).map_batches(keep, batch_format="pyarrow")
    size = sum(f.stat().st_size for path in paths for f in Path(path).rglob("*.parquet"))
    return ds.materialize() if size < MATERIALIZE_MAX_BYTES else ds


def run_finetune(cfg: RunConfig, *, out_name: str = "vanilla", log=print, table: bool = True) -> dict[str, Any]:
    ws = Workspace(Path(cfg.workdir))
    shards = ensure_shards(cfg, ws, log)
    manifest = load_manifest(shards)
    image_size = int(manifest["config"]["image_size"])
    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)

    eval_rows = select_eval_rows(load_shard_rows(shards), max_per_group=max(4, cfg.train.eval_max_samples // 4))
    job = TrainJob(
        cfg=cfg.model_dump(),
        mode="finetune",
        processor_dir=str(shards / "processor"),
        init_model="tiny-llava" if manifest["model_spec"] == "tiny-llava" else manifest["model_spec"],
        image_size=image_size,
        eval_records=eval_rows if cfg.train.eval_every else None,
    )
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"finetune-{out_name}") as run:
        mlflow.set_tag("job", "finetune")
        mlflow.log_params(mlflow_params(cfg))
        mlflow.log_dict(manifest, "shards_manifest.json")
        run_id = run.info.run_id
    callback = tracking.MlflowReportCallback(uri, run_id)
    log(f"fine-tuning {job.init_model} on {TRAIN_SPLITS} for {cfg.train.steps} steps "
        f"({cfg.train.num_workers} worker(s)); MLflow run {run_id}")
    result = fit(job, {"train": stream_dataset(shards, "train", task_weights=cfg.train.task_weights)}, name=f"finetune-{out_name}-{run_id[:8]}",
                 storage_path=storage_dir(ws.root), callbacks=[callback])
    callback.flush()
    model_dir = export_final_model(result, ws.models / out_name)
    log(f"saved {model_dir}; evaluating")
    report = evaluate(model_dir, shards, max_per_group=cfg.train.eval_max_samples)
    (ws.results).mkdir(parents=True, exist_ok=True)
    eval_path = ws.results / f"eval-{out_name}.json"
    eval_path.write_text(json.dumps(report, indent=1))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(report["metrics"], step=cfg.train.steps)
        mlflow.log_artifact(str(eval_path))
    logged = tracking.log_model(run_id, model_dir, cfg.tracking.registered_model_name, tracking_uri=uri) \
        if cfg.tracking.log_model else {}
    if table:  # the demo shows one table of every model at the end instead
        log(format_table({out_name: report["metrics"]}))
    return {"run_id": run_id, "model_dir": str(model_dir), "metrics": report["metrics"],
            "registered_model": cfg.tracking.registered_model_name if logged else None, **logged}
