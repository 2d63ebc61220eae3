"""`unlearn run`: one unlearning job on Ray Train, evaluated before and after, tracked in MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.evaluate import evaluate_cached
from pipelines.shards import stream_dataset
from pipelines.train.driver import TrainingJob, run_training_job
from pipelines.train.trainer import storage_dir
from pipelines.workspace import Workspace, ensure_shards, say_once
from unlearn_core.config import ConfigError, RunConfig, mlflow_params
from unlearn_core.eval.report import format_table
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


def _mask_for(cfg: RunConfig, method: Any, model_dir: Path, shards: Path, ws: Workspace, log) -> str | None:
    p = cfg.method.params
    name = cfg.method.name
    modules = p.get("mask", "both" if name == "mmunlearner" else "none")
    if modules == "none" or p.get("mask_path"):
        return None
    from pipelines.train.mask import compute_mask_remote

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
        from pipelines.train.teacher import build_teacher_cache

        p = method.params
        forget_dir = build_teacher_cache(
            init_model, shards, ws.root / "teacher",
            instruction=p.instruction, k=max(TEACHER_CACHE_K, p.top_k or 0), log=log,
        )
    mask_path = _mask_for(cfg, method, init_model, shards, ws, log)
    return {"shards": shards, "init_model": init_model, "method": method, "forget_dir": forget_dir,
            "mask_path": mask_path}


def unlearn_job(cfg: RunConfig, inputs: dict[str, Any], *, out_dir: Path, eval_path: Path, name: str,
                storage_path: str, log_model: bool = False) -> TrainingJob:
    """The unlearning job on prepared ``inputs`` (``prepare_inputs``): `unlearn run` and every sweep trial."""
    init_model = str(inputs["init_model"])
    datasets = {"forget": stream_dataset(inputs["shards"], "forget", forget_dir=inputs["forget_dir"])}
    if inputs["method"].needs_retain:
        datasets["retain"] = stream_dataset(inputs["shards"], "retain")
    return TrainingJob(
        cfg=cfg, mode="unlearn", shards=Path(inputs["shards"]), init_model=init_model, processor_dir=init_model,
        datasets=datasets, out_dir=out_dir, eval_path=eval_path, name=name, storage_path=storage_path,
        mask_path=inputs["mask_path"], log_model=log_model,
        register_as=cfg.tracking.registered_model_name or f"lvlm-unlearn-{cfg.method.name}",
    )


def run_unlearn(cfg: RunConfig, *, log=print, callbacks: list[Any] | None = None) -> dict[str, Any]:
    ws = Workspace(Path(cfg.workdir))
    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    inputs = prepare_inputs(cfg, ws, uri, log)
    shards, init_model = inputs["shards"], inputs["init_model"]
    before = evaluate_cached(init_model, shards, ws.results, cfg.train.eval_max_samples)
    run_id = tracking.open_run(
        uri, exp_id, run_name=f"unlearn-{cfg.method.name}", params=mlflow_params(cfg),
        tags={"job": "unlearn", "method": cfg.method.name, "init_model": str(init_model)},
    )
    with tracking.run_status(uri, run_id, finish=False):  # FAILED if even the job cannot be set up
        tracking.log_metrics(uri, run_id, {f"before.{k}": v for k, v in before["metrics"].items()})
        if inputs["mask_path"]:
            from pipelines.train.mask import log_mask

            log_mask(uri, run_id, inputs["mask_path"])
        tag = f"{cfg.method.name}-{run_id[:8]}"
        job = unlearn_job(cfg, inputs, out_dir=ws.models / tag, eval_path=ws.results / f"eval-{tag}.json",
                          name=f"unlearn-{tag}", storage_path=storage_dir(ws.root), log_model=cfg.tracking.log_model)
        job.callbacks.extend(callbacks or [])
    log(f"unlearning with {cfg.method.name} for {cfg.train.steps} steps; MLflow run {run_id}")
    out = run_training_job(job, tracking_uri=uri, run_id=run_id, log=log)
    log(format_table({"before": before["metrics"], cfg.method.name: out["metrics"]}))
    return {**out, "before": before["metrics"]}
