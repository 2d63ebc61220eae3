"""`unlearn finetune`: the vanilla model that knows the people (the one later unlearned), or with
``exclude_forget`` the retrained reference: the same recipe without the forget rows (or people)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.evaluate import remember_evaluation
from pipelines.shards import load_manifest, stream_dataset
from pipelines.train.driver import JobResult, TrainingJob, run_training_job
from pipelines.train.trainer import storage_dir
from pipelines.workspace import Workspace, ensure_shards
from unlearn_core.config import RunConfig, mlflow_params, with_launcher_resolved
from unlearn_core.data.selection import RETRAIN_STREAMS, STREAM_SPLITS
from unlearn_core.eval.report import format_table


def run_finetune(
    cfg: RunConfig,
    *,
    out_name: str = "vanilla",
    log=print,
    table: bool = True,
    exclude_forget: str | None = None,
) -> JobResult:
    """Fine-tune ``cfg``'s recipe into ``WORKDIR/models/<out_name>``; ``exclude_forget`` (``rows`` or
    ``people``, ``unlearn_core.data.selection.RETRAIN_STREAMS``) leaves the forget rows or people out."""
    stream = RETRAIN_STREAMS[exclude_forget] if exclude_forget else "train"
    cfg = with_launcher_resolved(cfg)
    ws = Workspace(Path(cfg.workdir))
    shards = ensure_shards(cfg, ws, log)
    manifest = load_manifest(shards)
    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    tags = {"job": "finetune", **({"exclude_forget": exclude_forget} if exclude_forget else {})}
    run_id = tracking.open_run(
        uri, exp_id, run_name=f"finetune-{out_name}", tags=tags, params=mlflow_params(cfg)
    )
    with tracking.run_status(uri, run_id, finish=False):  # FAILED if even the job cannot be set up
        MlflowClient(uri).log_dict(run_id, manifest, "shards_manifest.json")
        job = TrainingJob(
            cfg=cfg,
            mode="finetune",
            shards=shards,
            init_model="tiny-llava" if manifest["model_spec"] == "tiny-llava" else manifest["model_spec"],
            processor_dir=str(shards / "processor"),
            datasets={"train": stream_dataset(shards, stream, task_weights=cfg.train.task_weights)},
            out_dir=ws.models / out_name,
            eval_path=ws.results / f"eval-{out_name}.json",
            name=f"finetune-{out_name}-{run_id[:8]}",
            storage_path=storage_dir(ws.root),
            log_model=cfg.tracking.log_model,
            register_as=cfg.tracking.registered_model_name,
        )
    log(
        f"fine-tuning {job.init_model} on {STREAM_SPLITS[stream]} for {cfg.train.steps} steps "
        f"({cfg.train.num_workers} worker(s)); MLflow run {run_id}"
    )
    out = run_training_job(job, tracking_uri=uri, run_id=run_id, log=log)
    # The final evaluation is the vanilla's "before" evaluation of every run that starts from it.
    remember_evaluation(out.report, out.model_dir, shards, ws.results, cfg.train.eval_max_samples)
    if table:  # the demo shows one table of every model at the end instead
        log(format_table({out_name: out.metrics}))
    return out
