"""`unlearn run`: one unlearning job on Ray Train, evaluated before and after, tracked in MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow

from pipelines import tracking
from pipelines.evaluate import evaluate, load_shard_rows
from pipelines.finetune import stream_dataset
from pipelines.preprocess import load_manifest
from pipelines.train import TrainJob, export_final_model, fit, storage_dir
from pipelines.workspace import Workspace, ensure_shards, say_once
from unlearn_core.config import ConfigError, RunConfig, mlflow_params
from unlearn_core.eval.report import format_table
from unlearn_core.eval.runner import select_eval_rows
from unlearn_core.methods import get_method

TEACHER_CACHE_K = 16


def resolve_init_model(cfg: RunConfig, ws: Workspace, tracking_uri: str) -> Path:
    """The model to unlearn: a registry URI (pulled), a local folder, or the workdir's vanilla model."""
    spec = cfg.model.spec
    if spec.startswith("models:/"):
        safe = spec[len("models:/") :].replace("/", "_").replace("@", "_")
        return tracking.pull(spec, ws.root / "pulled" / safe, tracking_uri=tracking_uri)
    if spec == "tiny-llava":
        vanilla = ws.models / "vanilla"
        if not (vanilla / "config.json").exists():
            raise ConfigError(f"model.spec is tiny-llava but {vanilla} does not exist: run `unlearn finetune` first")
        return vanilla
    path = Path(spec)
    if path.is_dir():
        return path
    raise ConfigError(
        f"model.spec {spec!r}: unlearning starts from a fine-tuned model (a folder or models:/NAME@ALIAS)"
    )


def evaluate_cached(model_dir: Path, shards: Path, ws: Workspace, max_per_group: int) -> dict[str, Any]:
    """Evaluation keyed by the weights' sha256: the vanilla model is evaluated once per shard set."""
    fp = load_manifest(shards)["fingerprint"][:12]
    path = ws.results / f"eval-{tracking.weights_sha256(model_dir)[:12]}-{fp}-{max_per_group}.json"
    if path.exists():
        return json.loads(path.read_text())
    report = evaluate(model_dir, shards, max_per_group=max_per_group)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


def _mask_for(cfg: RunConfig, method: Any, model_dir: Path, shards: Path, ws: Workspace, log) -> str | None:
    p = cfg.method.params
    name = cfg.method.name
    modules = p.get("mask", "both" if name == "mmunlearner" else "none")
    if modules == "none" or p.get("mask_path"):
        return None
    from pipelines.mask import compute_mask_remote

    gamma = float(p.get("gamma", 1.0))
    sha = tracking.weights_sha256(model_dir)[:12]
    lora = f"lora{cfg.model.lora_r}" if cfg.model.lora else "full"
    out = ws.root / "masks" / f"{sha}-{modules}-g{gamma:g}-{lora}.safetensors"
    if out.exists():
        say_once(log, f"[cached] saliency mask {out}")
        return str(out)
    log(f"computing the MMUnlearner saliency mask (modules={modules}, gamma={gamma}) as a Ray task")
    stats = compute_mask_remote(cfg.model_dump(), str(model_dir), str(shards), str(out), modules=modules, gamma=gamma)
    log(f"mask selected fraction: {stats['selected_fraction']}")
    return str(out)


def prepare_inputs(cfg: RunConfig, ws: Workspace, tracking_uri: str, log=print) -> dict[str, Any]:
    """Shards, initial model, method, teacher cache and mask: everything a trial needs, cached."""
    shards = ensure_shards(cfg, ws, log)
    init_model = resolve_init_model(cfg, ws, tracking_uri)
    method = get_method(cfg.method.name, dict(cfg.method.params))
    forget_dir = None
    if "guide_" in method.views:
        from pipelines.teacher import build_teacher_cache

        p = method.params
        forget_dir = build_teacher_cache(
            init_model, shards, ws.root / "teacher",
            instruction=p.instruction, k=max(TEACHER_CACHE_K, p.top_k or 0), log=log,
        )
    mask_path = _mask_for(cfg, method, init_model, shards, ws, log)
    return {"shards": shards, "init_model": init_model, "method": method, "forget_dir": forget_dir,
            "mask_path": mask_path}


def run_unlearn(cfg: RunConfig, *, log=print, callbacks: list[Any] | None = None, table: bool = True) -> dict[str, Any]:
    ws = Workspace(Path(cfg.workdir))
    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    inputs = prepare_inputs(cfg, ws, uri, log)
    shards, init_model, method = inputs["shards"], inputs["init_model"], inputs["method"]
    image_size = int(load_manifest(shards)["config"]["image_size"])
    before = evaluate_cached(init_model, shards, ws, cfg.train.eval_max_samples)

    eval_rows = select_eval_rows(load_shard_rows(shards), max_per_group=max(4, cfg.train.eval_max_samples // 4))
    job = TrainJob(
        cfg=cfg.model_dump(),
        mode="unlearn",
        processor_dir=str(init_model),
        init_model=str(init_model),
        image_size=image_size,
        eval_records=eval_rows if cfg.train.eval_every else None,
        mask_path=inputs["mask_path"],
    )
    datasets = {"forget": stream_dataset(shards, "forget", forget_dir=inputs["forget_dir"])}
    if method.needs_retain:
        datasets["retain"] = stream_dataset(shards, "retain")

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"unlearn-{cfg.method.name}") as run:
        run_id = run.info.run_id
        mlflow.set_tags({"job": "unlearn", "method": cfg.method.name, "init_model": str(init_model)})
        mlflow.log_params(mlflow_params(cfg))
        mlflow.log_metrics({f"before.{k}": v for k, v in before["metrics"].items()})
    if inputs["mask_path"]:
        from pipelines.mask import log_mask

        log_mask(uri, run_id, inputs["mask_path"])
    callback = tracking.MlflowReportCallback(uri, run_id)
    log(f"unlearning with {cfg.method.name} for {cfg.train.steps} steps; MLflow run {run_id}")
    result = fit(job, datasets, name=f"unlearn-{cfg.method.name}-{run_id[:8]}", storage_path=storage_dir(ws.root),
                 callbacks=[callback, *(callbacks or [])])
    callback.flush()
    model_dir = export_final_model(result, ws.models / f"{cfg.method.name}-{run_id[:8]}")
    after = evaluate(model_dir, shards, max_per_group=cfg.train.eval_max_samples)
    eval_path = ws.results / f"eval-{cfg.method.name}-{run_id[:8]}.json"
    eval_path.write_text(json.dumps(after, indent=1))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(after["metrics"], step=cfg.train.steps)
        mlflow.log_artifact(str(eval_path))
    registered = cfg.tracking.registered_model_name or f"lvlm-unlearn-{cfg.method.name}"
    logged = tracking.log_model(run_id, model_dir, registered, tracking_uri=uri) if cfg.tracking.log_model else {}
    if table:  # the demo shows one table of every method at the end instead
        log(format_table({"before": before["metrics"], cfg.method.name: after["metrics"]}))
    return {"run_id": run_id, "model_dir": str(model_dir), "before": before["metrics"], "metrics": after["metrics"],
            "registered_model": registered if logged else None, **logged}
