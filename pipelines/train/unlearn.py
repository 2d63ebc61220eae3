"""`unlearn run`: one unlearning job on Ray Train, evaluated before and after, tracked in MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.evaluate import evaluate_cached
from pipelines.shards import load_manifest, stream_dataset
from pipelines.train.driver import JobResult, TrainingJob, run_training_job
from pipelines.train.trainer import storage_dir
from pipelines.workspace import NotCached, Workspace, ensure_shards, say_once
from unlearn_core.config import ConfigError, RunConfig, mlflow_params, with_launcher_resolved
from unlearn_core.data.selection import count_stream_rows
from unlearn_core.eval.report import format_table
from unlearn_core.methods import UnlearnMethod, get_method
from unlearn_core.methods.saliency import mask_cache_key


def resolve_init_model(cfg: RunConfig, ws: Workspace, tracking_uri: str) -> Path:
    """The model to unlearn: a registry URI (pulled), a local folder, or the workdir's vanilla model."""
    spec = cfg.model.spec
    if spec.startswith("models:/"):
        safe = spec[len("models:/") :].replace("/", "_").replace("@", "_")
        return tracking.pull(spec, ws.root / "pulled" / safe, tracking_uri=tracking_uri)
    if spec == "tiny-llava":
        vanilla = ws.models / "vanilla"
        if not (vanilla / "config.json").exists():
            raise ConfigError(
                f"model.spec is tiny-llava but {vanilla} does not exist: run `unlearn finetune` first"
            )
        return vanilla
    path = Path(spec)
    if path.is_dir():
        return path
    raise ConfigError(
        f"model.spec {spec!r}: unlearning starts from a fine-tuned model (a folder or models:/NAME@ALIAS)"
    )


def _mask_for(
    cfg: RunConfig,
    method: UnlearnMethod,
    model_dir: Path,
    shards: Path,
    ws: Workspace,
    log,
    compute: bool = True,
) -> str | None:
    """The saliency mask the method asks for (``mask_spec``), computed once per key, or None."""
    spec = method.mask_spec()
    if spec is None:
        return None
    if getattr(method.params, "mask_path", None):
        return str(method.params.mask_path)
    from pipelines.train.mask import compute_mask, compute_mask_remote

    key = mask_cache_key(
        tracking.weights_sha256(model_dir),
        load_manifest(shards)["fingerprint"],
        spec,
        cfg.model.model_dump(),
        cfg.train.seed,
    )
    out = ws.root / "masks" / f"{spec.group}-g{spec.gamma:g}-{key}.safetensors"
    if out.exists():
        say_once(log, f"[cached] saliency mask {out}")
        return str(out)
    if not compute:
        raise NotCached(f"saliency mask {out}")
    # A job that trains in this process computes its mask here too: no task's new process and imports
    # (~7 s here); the demo's mask has the same tensors both ways.
    here = cfg.train.launcher == "in_process"
    log(
        f"computing the saliency mask (modules={spec.group}, gamma={spec.gamma}, rows: {spec.recipe}) "
        + ("in this process" if here else "as a Ray task")
    )
    stats = (compute_mask if here else compute_mask_remote)(
        cfg.model_dump(), str(model_dir), str(shards), str(out), modules=spec.group, gamma=spec.gamma
    )
    log(
        f"mask selected fraction: {stats['selected_fraction']}; rows {stats['rows']}, entities {stats['entities']}"
    )
    return str(out)


def training_stream_sizes(shards: Path) -> dict[str, int]:
    """Rows of the forget and retain training streams (read from the shards' split/task columns)."""
    import pyarrow.parquet as pq

    tables = {
        s: pq.read_table(shards / s, columns=["split", "task"])
        for s in ("forget", "retain")
        if (shards / s).is_dir()
    }
    return count_stream_rows(tables)


@dataclass(frozen=True)
class PreparedInputs:
    """What an unlearning job starts from, every piece cached in the workspace (``prepare_inputs``)."""

    cfg: RunConfig  # every method param resolved (defaults, values derived from the data, the mask path)
    shards: Path
    init_model: Path  # the model folder to unlearn
    method: UnlearnMethod  # built with the resolved params
    forget_dir: Path | None = None  # the forget shards annotated with the teacher's top-k (PUBG), if asked
    mask_path: str | None = None  # the saliency mask file, if the method asks for one


def prepare_inputs(
    cfg: RunConfig, ws: Workspace, tracking_uri: str, log=print, *, compute: bool = True
) -> PreparedInputs:
    """Shards, initial model, and what the method asks for (teacher cache, saliency mask, params
    derived from the stream sizes): everything a trial needs, cached. The result's ``cfg`` holds
    every resolved method param (defaults, derived values, the mask path), as MLflow records them.
    ``compute=False`` raises ``NotCached`` where a teacher cache or mask would have to be computed
    (a sweep trial then computes it outside its placement group)."""
    shards = ensure_shards(cfg, ws, log)
    init_model = resolve_init_model(cfg, ws, tracking_uri)
    method = get_method(cfg.method.name, dict(cfg.method.params))
    forget_dir = None
    teacher = method.teacher_cache()
    if teacher is not None:
        from pipelines.train.teacher import build_teacher_cache

        forget_dir = build_teacher_cache(
            init_model,
            shards,
            ws.root / "teacher",
            instruction=teacher.instruction,
            k=teacher.k,
            log=log,
            compute=compute,
        )
    params = {
        **method.resolved_params(),
        **method.derive(training_stream_sizes(shards), cfg.train.batch_size),
    }
    mask_path = _mask_for(cfg, method, init_model, shards, ws, log, compute)
    if mask_path is not None:
        params["mask_path"] = mask_path
    method = get_method(cfg.method.name, params)
    resolved = cfg.model_copy(
        update={"method": cfg.method.model_copy(update={"params": method.resolved_params()})}
    )
    return PreparedInputs(
        cfg=resolved,
        shards=shards,
        init_model=init_model,
        method=method,
        forget_dir=forget_dir,
        mask_path=mask_path,
    )


def unlearn_job(
    cfg: RunConfig,
    inputs: PreparedInputs,
    *,
    out_dir: Path,
    eval_path: Path,
    name: str,
    storage_path: str,
    log_model: bool = False,
) -> TrainingJob:
    """The unlearning job on prepared ``inputs`` (``prepare_inputs``): `unlearn run` and every sweep trial."""
    init_model = str(inputs.init_model)
    datasets = {"forget": stream_dataset(inputs.shards, "forget", forget_dir=inputs.forget_dir)}
    if inputs.method.needs_retain:
        datasets["retain"] = stream_dataset(inputs.shards, "retain")
    return TrainingJob(
        cfg=cfg,
        mode="unlearn",
        shards=inputs.shards,
        init_model=init_model,
        processor_dir=init_model,
        datasets=datasets,
        out_dir=out_dir,
        eval_path=eval_path,
        name=name,
        storage_path=storage_path,
        mask_path=inputs.mask_path,
        log_model=log_model,
        register_as=cfg.tracking.registered_model_name or f"lvlm-unlearn-{cfg.method.name}",
    )


def run_unlearn(
    cfg: RunConfig, *, log=print, callbacks: list[Any] | None = None, table: bool = True
) -> JobResult:
    """`unlearn run`: the starting model evaluated (cached), then the unlearning job on its own MLflow
    run (``before.*`` metrics are its starting model's)."""
    cfg = with_launcher_resolved(cfg)
    ws = Workspace(Path(cfg.workdir))
    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    inputs = prepare_inputs(cfg, ws, uri, log)
    cfg = inputs.cfg  # every method param resolved (defaults, derived k, mask path)
    shards, init_model = inputs.shards, inputs.init_model
    before = evaluate_cached(init_model, shards, ws.results, cfg.train.eval_max_samples)
    run_id = tracking.open_run(
        uri,
        exp_id,
        run_name=f"unlearn-{cfg.method.name}",
        params=mlflow_params(cfg),
        tags={"job": "unlearn", "method": cfg.method.name, "init_model": str(init_model)},
    )
    with tracking.run_status(uri, run_id, finish=False):  # FAILED if even the job cannot be set up
        tracking.log_metrics(uri, run_id, {f"before.{k}": v for k, v in before["metrics"].items()})
        if inputs.mask_path:
            from pipelines.train.mask import log_mask

            log_mask(uri, run_id, inputs.mask_path)
        tag = f"{cfg.method.name}-{run_id[:8]}"
        job = unlearn_job(
            cfg,
            inputs,
            out_dir=ws.models / tag,
            eval_path=ws.results / f"eval-{tag}.json",
            name=f"unlearn-{tag}",
            storage_path=storage_dir(ws.root),
            log_model=cfg.tracking.log_model,
        )
        job.callbacks.extend(callbacks or [])
    log(f"unlearning with {cfg.method.name} for {cfg.train.steps} steps; MLflow run {run_id}")
    out = run_training_job(job, tracking_uri=uri, run_id=run_id, log=log)
    if table:  # the demo shows one table of every method at the end instead
        log(format_table({"before": before["metrics"], cfg.method.name: out.metrics}))
    return out
