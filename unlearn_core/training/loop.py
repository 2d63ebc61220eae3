"""The per-worker training loop, framework-free: the Ray layer injects reporting and data.

One loop serves the vanilla fine-tune and every unlearning method: a ``step_fn(step)`` does the
optimisation work of one step (methods own their step: MMUnlearner alternates masked ascent and
retain descent), and the loop handles logging cadence, evaluation, checkpoints and resume.
The checkpoint format is pluggable (``save``/``full_weights``): DDP writes safetensors on rank 0,
DeepSpeed (``unlearn_core.training.ds_engine``) writes its sharded checkpoint on every rank.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unlearn_core.config import TrainConfig
from unlearn_core.tensors import move_batch as to_device  # noqa: F401 - the workers' batch mover
from unlearn_core.tensors import unwrap_model as unwrap

ReportFn = Callable[[dict[str, float], "Path | None"], None]
StepFn = Callable[[int], dict[str, float]]
# save(folder, step) runs on every rank; True = this rank reports ``folder`` as (part of) the checkpoint.
SaveFn = Callable[[Path, int], bool]
# A context entered on every rank around evaluation and the final save: full weights inside it.
FullWeightsFn = Callable[[], AbstractContextManager[Any]]


@dataclass
class WorkerContext:
    """What the distributed layer tells the loop about this worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as independent CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in unwrap(model).state_dict().items()}


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict | None = None,
    method_state: dict[str, Any] | None = None,
) -> None:
    """Weights as safetensors; optimizer state (and the method's own, e.g. MMUnlearner's masked
    optimizer) as torch files of tensors and numbers only (loaded ``weights_only``)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = trainable_state(model)
    save_file(state, str(folder / "model.safetensors"))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    if method_state:
        torch.save(method_state, folder / "method.pt")
    meta = {"step": step, "rng_torch": torch.get_rng_state().tolist(), **(extra or {})}
    (folder / "trainer_state.json").write_text(json.dumps(meta))


def load_method_state(folder: Path) -> dict[str, Any]:
    """The method state a checkpoint holds (``{}`` when the method keeps none)."""
    path = folder / "method.pt"
    return torch.load(path, weights_only=True) if path.is_file() else {}


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Restore weights, optimizer and RNG from ``folder``; return the step to continue from."""
    weights = load_file(str(folder / "model.safetensors"))
    missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
    if unexpected:
        raise RuntimeError(f"{folder}: checkpoint has keys the model lacks: {unexpected[:5]}")
    if optimizer is not None and (folder / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    meta = json.loads((folder / "trainer_state.json").read_text())
    torch.set_rng_state(torch.tensor(meta["rng_torch"], dtype=torch.uint8))
    return int(meta["step"])


def cycle(make_iter: Callable[[int], Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Endless batches: a fresh epoch iterator each time one runs out (epoch index passed for shuffling)."""
    epoch = 0
    while True:
        empty = True
        for batch in make_iter(epoch):
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the data set shard is empty: no batch to train on")
        epoch += 1


def prefetch(batches: Iterator[dict[str, Any]], depth: int) -> Iterator[dict[str, Any]]:
    """Collate the next ``depth`` batches in a background thread while the model computes.

    torch releases the GIL inside its kernels, so the padding collate (numpy, Python) of the next
    batch overlaps the current step. ``depth`` 0 returns ``batches`` unchanged. Errors in the
    producer are raised in the consumer; the thread is a daemon and stops with the process.
    """
    if depth <= 0:
        return batches
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                q.put(batch)
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    threading.Thread(target=produce, name="batch-prefetch", daemon=True).start()

    def consume() -> Iterator[dict[str, Any]]:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    return consume()


def run_loop(
    *,
    cfg: TrainConfig,
    ctx: WorkerContext,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    report: ReportFn,
    start_step: int = 0,
    evaluate: Callable[[], dict[str, float]] | None = None,
    finalize: Callable[[Path], None] | None = None,
    log_every: int = 10,
    save: SaveFn | None = None,
    full_weights: FullWeightsFn | None = None,
    method_state: Callable[[], dict[str, Any]] | None = None,
    final_eval: Callable[[Path], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Run steps ``start_step..cfg.steps``; report metrics, evaluations and checkpoints on cadence.

    ``evaluate`` runs on rank 0 only (others get an empty dict); ``finalize(dir)`` lets rank 0 write
    the final model folder into the last checkpoint. ``save`` defaults to the DDP format (rank 0
    writes ``save_checkpoint``); ``full_weights`` (default: no-op) is entered on all ranks around
    ``evaluate`` and ``finalize`` (ZeRO-3 gathers its partitioned parameters there). ``final_eval(dir)``,
    when given, replaces ``evaluate`` at the last step: it runs on every rank (each generates its share
    of the final evaluation) and its metrics (rank 0's) go into the last report.
    """
    if save is None:

        def save(folder: Path, step: int) -> bool:
            if ctx.is_rank0:
                save_checkpoint(
                    folder, model, optimizer, step, method_state=method_state() if method_state else None
                )
            return ctx.is_rank0

    gathered = full_weights or contextlib.nullcontext
    last: dict[str, float] = {}
    window: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for step in range(start_step, cfg.steps):
        logs = step_fn(step)
        window.append(logs)
        done = step + 1
        is_last = done == cfg.steps
        want_eval = evaluate is not None and (
            (is_last and final_eval is None)
            or (not is_last and cfg.eval_every and done % cfg.eval_every == 0)
        )
        want_ckpt = is_last or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        want_log = want_eval or want_ckpt or done % log_every == 0
        if not want_log:
            continue
        metrics = _mean(window)
        window = []
        metrics["step"] = float(done)
        metrics["steps_per_s"] = (done - start_step) / max(time.perf_counter() - t0, 1e-9)
        if want_eval and evaluate is not None:
            was_training = model.training
            model.eval()
            with gathered():
                metrics.update(evaluate() if ctx.is_rank0 else {})
            model.train(was_training)
        if want_ckpt:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                keep = save(folder, done)
                if is_last and finalize is not None:
                    with gathered():
                        if ctx.is_rank0:
                            finalize(folder / "model")
                if is_last and final_eval is not None:
                    was_training, began = model.training, time.perf_counter()
                    model.eval()
                    with gathered():
                        metrics.update(final_eval(folder))
                    model.train(was_training)
                    metrics["final_eval_s"] = time.perf_counter() - began
                report(metrics, folder if keep or ctx.is_rank0 else None)
        else:
            report(metrics, None)
        last = metrics
    return last


def _mean(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in window for k in d}
    return {k: float(np.mean([d[k] for d in window if k in d])) for k in sorted(keys)}
