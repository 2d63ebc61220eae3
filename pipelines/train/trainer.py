"""Ray Train (V2) runner: a TorchTrainer whose per-worker loop lives in ``unlearn_core``.

The worker reads its shard of the tokenized Parquet data through ``get_dataset_shard``, runs
``unlearn_core.training`` and reports metrics + checkpoints through ``ray.train.report``. The
controller-side MLflow callback logs every report live.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines.preflight import earlier_model
from pipelines.train.progress import ProgressCallback, training_progress
from pipelines.train.session import RayTrainSession, TrainSession
from pipelines.train.worker_data import iter_shard
from unlearn_core import outputs
from unlearn_core.config import ConfigError, RunConfig, resolve_launcher
from unlearn_core.training import ds_engine
from unlearn_core.training.loop import (
    FullWeightsFn,
    SaveFn,
    WorkerContext,
    load_checkpoint,
    load_method_state,
    prefetch,
    run_loop,
    seed_everything,
    to_device,
)
from unlearn_core.training.worker import build_worker_model, check_supported, ddp_kwargs, make_step_fn


@dataclass
class WorkerSpec:
    """Everything a worker needs, passed as ``train_loop_config`` (plain picklable data)."""

    cfg: dict[str, Any]  # RunConfig.model_dump()
    mode: str  # "finetune" | "unlearn"
    processor_dir: str
    init_model: str  # "tiny-llava" or a local HF folder
    image_size: int
    eval_records: list[dict[str, Any]] | None = None
    # The final evaluation's rows, in order, and their protocol: the workers generate the outputs after
    # the last step (each rank its share, gathered on rank 0, written into the last checkpoint), so the
    # job needs no second model load and no evaluation actors. None: the driver evaluates the export.
    final_eval_records: list[dict[str, Any]] | None = None
    final_eval_protocol: str = "synthetic"
    mask_path: str | None = None
    # A checkpoint folder to start from when the run itself has none (Train V2 deprecates the
    # trainer's resume_from_checkpoint; a run restarted under the same name resumes by itself).
    resume_from: str | None = None
    # The in-training audit probe (``pipelines.audit.probe_payload``: rows, settings, the reference's
    # figures): its ``audit_probe.*`` metrics join every evaluation, the final one included.
    audit_probe: dict[str, Any] | None = None


def _resume_folder(spec: WorkerSpec, session: TrainSession, stack: ExitStack) -> Path | None:
    """This run's latest checkpoint (a restarted run), else ``spec.resume_from``, else None."""
    folder = session.resume_folder(stack)
    if folder is not None:
        return folder
    return Path(spec.resume_from) if spec.resume_from else None


def _quiet_report_logs() -> None:
    """Ray Train logs every ``ray.train.report`` as a whole object at INFO; the controller's
    ``ProgressCallback`` prints a readable line instead. (The logger is named after its file.)"""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # a Ray without that module: keep its logs
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def worker_threads(torch_threads: int, cpus_per_worker: float) -> int:
    """The worker's intra-op thread count, always set explicitly: the numbers depend on it (a reduction
    split over 1 or 2 threads rounds differently), and torch's own default comes from the process's
    environment (OMP_NUM_THREADS as Ray set it for that process, else the machine's cores), not from
    the config."""
    return torch_threads or max(1, int(cpus_per_worker))


# A training worker's loop: ``(WorkerSpec as a dict, session) -> None``. The project's is ``run_worker``;
# bench/sweep_scale.py passes a stand-in that reports like it without a model (sweep overhead alone).
WorkerLoop = Callable[[dict[str, Any], TrainSession], None]


def train_worker(spec_dict: dict[str, Any], loop: WorkerLoop | None = None) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: ``loop`` (default :func:`run_worker`) in a Ray
    Train worker."""
    _quiet_report_logs()
    (loop or run_worker)(spec_dict, RayTrainSession())


def run_worker(spec_dict: dict[str, Any], session: TrainSession) -> None:
    """One training worker: build the model, restore a checkpoint if any, loop, finalize.

    ``train.deepspeed_stage`` 0 wraps the model in DDP (``prepare_model``); 2 or 3 builds a
    DeepSpeed ZeRO engine over the process group Ray Train already set up (every rank then
    writes its shard of each checkpoint).
    """
    spec = WorkerSpec(**spec_dict)
    cfg = RunConfig.model_validate(spec.cfg)
    # A DeepSpeed engine changes process-wide torch state: put it back when the worker is done.
    with ds_engine.process_state_kept() if cfg.train.deepspeed_stage else nullcontext():
        _train(spec, cfg, session)


def _train(spec: WorkerSpec, cfg: RunConfig, session: TrainSession) -> None:
    ctx = WorkerContext(rank=session.rank, world_size=session.world_size, device=session.device())
    torch.set_num_threads(worker_threads(cfg.train.torch_threads, cfg.train.cpus_per_worker))
    seed_everything(cfg.train.seed + ctx.rank)
    built = build_worker_model(
        cfg, spec.mode, spec.processor_dir, spec.init_model, spec.image_size, spec.mask_path
    )
    model = built.model
    if built.ref is not None:
        built.ref.to(ctx.device)
    use_ds = bool(cfg.train.deepspeed_stage)

    start_step = 0
    save: SaveFn | None = None  # None: the loop's DDP defaults (rank 0 writes safetensors)
    full_weights: FullWeightsFn | None = None
    with ExitStack() as stack:
        folder = _resume_folder(spec, session, stack)
        if not use_ds:
            optimizer = built.make_optimizer(model)
            if folder is not None:
                if ds_engine.is_deepspeed_checkpoint(folder):
                    raise ConfigError(
                        f"train.deepspeed_stage: {folder} is a DeepSpeed checkpoint; resume it with 2 or 3"
                    )
                start_step = load_checkpoint(folder, model, optimizer)
                if built.method is not None:
                    built.method.load_state_dict(load_method_state(folder))
            model = session.prepare_model(model, ddp_kwargs(built))
        else:
            if folder is not None and not ds_engine.is_deepspeed_checkpoint(folder):
                start_step = load_checkpoint(folder, model, None)  # DDP weights -> fresh ZeRO optimizer
            if ctx.device.type == "cuda":
                torch.cuda.set_device(ctx.device)
            engine = ds_engine.init_engine(
                model, cfg.train, world_size=ctx.world_size, local_rank=session.local_rank
            )
            if folder is not None and ds_engine.is_deepspeed_checkpoint(folder):
                start_step = ds_engine.load_ds_checkpoint(engine, folder)
            model, optimizer = engine, engine.optimizer
            save = partial(ds_engine.save_ds_checkpoint, engine)  # every rank writes its shard
            full_weights = partial(ds_engine.full_weights, engine)  # ZeRO-3: gather for eval / final save

    streams = {
        name: prefetch(
            iter_shard(
                name,
                cfg.train.batch_size,
                built.processor,
                prefixes,
                cfg.train.seed + 1000 * ctx.rank,
                shard=session.dataset_shard(name),
                group_by_length=cfg.train.group_by_length,
            ),
            cfg.train.prefetch_batches,
        )
        for name, prefixes in built.streams.items()
    }
    batches = {name: (to_device(b, ctx.device) for b in it) for name, it in streams.items()}
    step_fn = make_step_fn(built, model, optimizer, batches, cfg.train)

    def probe() -> dict[str, float]:
        if not spec.audit_probe:
            return {}
        from unlearn_core.audit.probe import run_probe

        return run_probe(built.unwrapped(model), built.processor, spec.audit_probe)

    evaluate = None
    if spec.eval_records:  # defined on every rank (ZeRO-3 gathers weights on all); run on rank 0 only
        from unlearn_core.eval.runner import evaluate_model

        def evaluate() -> dict[str, float]:
            metrics = evaluate_model(
                built.unwrapped(model), built.processor, spec.eval_records, image_size=spec.image_size
            )
            return {**metrics, **probe()}

    def finalize(folder: Path) -> None:
        built.save_final(model, folder)

    final_eval = None
    if spec.final_eval_records:

        def final_eval(folder: Path) -> dict[str, float]:
            return final_evaluation(
                built.unwrapped(model), built.processor, spec.final_eval_records or [], spec.final_eval_protocol,
                ctx, folder, extra=probe,
            )  # fmt: skip

    run_loop(
        cfg=cfg.train,
        ctx=ctx,
        model=model,
        optimizer=optimizer,
        step_fn=step_fn,
        report=session.report,
        start_step=start_step,
        evaluate=evaluate,
        finalize=finalize,
        final_eval=final_eval,
        save=save,
        full_weights=full_weights,
        method_state=built.method.state_dict if built.method is not None else None,
    )


FINAL_OUTPUTS = "final_eval_outputs.json"  # in the last checkpoint, beside model/


def final_evaluation(
    model: torch.nn.Module,
    processor: Any,
    rows: list[dict[str, Any]],
    protocol_name: str,
    ctx: WorkerContext,
    folder: Path,
    extra: Callable[[], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Every rank generates its share of the final evaluation; rank 0 gathers the outputs, writes them
    to ``folder`` (the last checkpoint) and returns their metrics (the other ranks return {}).
    ``extra()`` (rank 0): metrics that are not scored from the outputs (the audit probe), written
    beside them as ``extra_metrics``."""
    import json

    import torch.distributed as dist

    from unlearn_core.eval.protocols import get_protocol
    from unlearn_core.eval.runner import chunk_outputs
    from unlearn_core.eval.score import score_outputs

    protocol = get_protocol(protocol_name)
    mine = chunk_outputs(model, processor, rows, protocol=protocol, rank=ctx.rank, world_size=ctx.world_size)
    shares: list[Any] = [mine]
    if ctx.world_size > 1:
        shares = [None] * ctx.world_size
        dist.all_gather_object(shares, mine)
    if not ctx.is_rank0:
        return {}
    outputs = {sid: out for share in shares for sid, out in (share or {}).items()}
    more = extra() if extra is not None else {}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FINAL_OUTPUTS).write_text(
        json.dumps({"protocol": protocol_name, "outputs": outputs, "extra_metrics": more})
    )
    return {**score_outputs(rows, outputs, protocol)["metrics"], **more}


def final_outputs(result: ray.train.Result) -> dict[str, Any] | None:
    """The final evaluation's outputs the workers wrote into the last checkpoint (None: not there)."""
    import json

    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as d:
        path = Path(d) / FINAL_OUTPUTS
        return json.loads(path.read_text()) if path.exists() else None


def fit(
    spec: WorkerSpec,
    datasets: dict[str, ray.data.Dataset],
    *,
    name: str,
    storage_path: str,
    callbacks: list[Any] | None = None,
    loop: WorkerLoop | None = None,
) -> ray.train.Result:
    """Build and fit the TorchTrainer, or run its one worker here when ``train.launcher`` resolves to
    ``in_process`` (``resolve_launcher``); returns the Result (its checkpoint holds ``model/``).
    ``loop``: the workers' loop (default :func:`run_worker`)."""
    cfg = RunConfig.model_validate(spec.cfg)
    check_supported(cfg, spec.mode)
    t = cfg.train
    in_process = resolve_launcher(t) == "in_process"
    scaling = ScalingConfig(
        num_workers=t.num_workers,
        use_gpu=t.use_gpu,
        resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})},
    )
    data_ctx = ray.data.DataContext.get_current()
    bars = data_ctx.enable_progress_bars
    # The workers' shard readers restart every epoch; their progress bars would bury the progress lines.
    data_ctx.enable_progress_bars = False
    try:
        with training_progress(name, t.steps) as inbox:
            progress = ProgressCallback(name, t.steps, inbox)
            if in_process:
                from pipelines.train.in_process import fit_in_process

                return fit_in_process(
                    loop or run_worker,
                    spec.__dict__,
                    datasets,
                    name=name,
                    storage_path=storage_path,
                    callbacks=[progress, *(callbacks or [])],
                    max_failures=t.max_failures,
                    use_gpu=t.use_gpu,
                )
            run_config = ray.train.RunConfig(
                name=name,
                storage_path=storage_path,
                failure_config=FailureConfig(max_failures=t.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=[progress, *(callbacks or [])],
            )
            trainer = TorchTrainer(
                partial(train_worker, loop=loop) if loop is not None else train_worker,
                train_loop_config=spec.__dict__,
                scaling_config=scaling,
                run_config=run_config,
                datasets=datasets,
            )
            return trainer.fit()
    finally:
        data_ctx.enable_progress_bars = bars


def export_final_model(result: ray.train.Result, out_dir: str | Path) -> Path:
    """Copy the final HF model folder out of the run's last checkpoint into ``out_dir`` (a folder of
    the workdir's ``models/``): copied beside it, then moved in; an earlier model there is replaced
    only if the project wrote it (``unlearn_core.outputs``; a model folder from before the marker counts)."""
    if result.checkpoint is None:
        raise RuntimeError("the training run produced no checkpoint")
    out = outputs.check_folder(out_dir, "model folder", force=True, recognise=earlier_model)
    with result.checkpoint.as_directory() as d:
        src = Path(d) / "model"
        if not src.is_dir():
            raise RuntimeError(f"last checkpoint {result.checkpoint.path} holds no model/ folder")
        stage = outputs.new_stage(out)
        try:
            shutil.copytree(src, stage / "model")
            outputs.publish_folder(stage / "model", out, "training job", force=True, recognise=earlier_model)
        finally:
            outputs.discard(stage)
    return out


def storage_dir(workdir: str | Path) -> str:
    path = Path(os.environ.get("UNLEARN_STORAGE_PATH", Path(workdir) / "ray_results")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
