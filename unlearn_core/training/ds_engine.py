"""DeepSpeed ZeRO-2/3 engine adapter for the training worker (``train.deepspeed_stage`` 2 or 3).

The distributed layer initialises the torch process group (Ray Train: gloo on CPU, nccl on GPU);
``init_engine`` wraps the model in a ``DeepSpeedEngine`` on top of it, with the ZeRO config from
``deepspeed_cfg``. The engine does gradient accumulation and clipping; the worker's warm-up +
cosine LR schedule is applied to the engine optimizer's param groups. Checkpoints are DeepSpeed's
own sharded format, written by every rank into its checkpoint folder (the distributed layer merges
the folders), plus a JSON ``trainer_state.json`` from rank 0. ``deepspeed`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from unlearn_core.config import TrainConfig
from unlearn_core.training.deepspeed_cfg import deepspeed_config
from unlearn_core.training.steps import apply_lr_schedule, naming_the_step, sft_loss

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

DS_SUBDIR = "deepspeed"  # the engine's checkpoint folder inside a checkpoint
STATE_FILE = "trainer_state.json"


def is_engine(model: torch.nn.Module) -> bool:
    """True for a ``DeepSpeedEngine`` (checked by name: no deepspeed import needed)."""
    return type(model).__name__ == "DeepSpeedEngine"


def is_deepspeed_checkpoint(folder: Path) -> bool:
    """True when ``folder`` was written by ``save_ds_checkpoint``."""
    return (Path(folder) / DS_SUBDIR).is_dir()


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Put back, once the engine's work is done, what ``deepspeed.initialize`` changes for the whole
    process: a ZeRO-3 engine replaces ``torch.nn.functional.linear`` with its memory-efficient
    wrapper (DeepSpeed: "This will persist unless manually reset"), whose matmul + add rounds
    differently from torch's fused linear, and ``LOCAL_RANK`` is set. A model trained later in the
    same process (an in-process run, the next test) then computes as if no engine had run."""
    linear = torch.nn.functional.linear
    local_rank = os.environ.get("LOCAL_RANK")
    try:
        yield
    finally:
        torch.nn.functional.linear = linear
        if local_rank is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = local_rank


def init_engine(
    model: torch.nn.Module,
    tc: TrainConfig,
    *,
    world_size: int,
    local_rank: int = 0,
    zero_overrides: dict[str, Any] | None = None,
) -> DeepSpeedEngine:
    """Wrap ``model`` in a ZeRO engine over the already-initialised process group (AdamW over the
    trainable parameters only). ``zero_overrides`` update the ``zero_optimization`` section. Call it
    inside ``process_state_kept()`` where the process lives on after the engine."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("DeepSpeed needs an initialised torch process group (init_process_group) first")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check model.lora / model.train_vision")
    os.environ.setdefault("LOCAL_RANK", str(local_rank))  # DeepSpeed asserts it is set
    import deepspeed

    config = deepspeed_config(tc, world_size=world_size)
    config["zero_optimization"].update(zero_overrides or {})
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=params, config=config, dist_init_required=False
    )
    return engine


def make_ds_step_fn(
    method: Any,
    ref: torch.nn.Module | None,
    engine: DeepSpeedEngine,
    batches: dict[str, Iterator[dict[str, Any]]],
    tc: TrainConfig,
) -> Callable[[int], dict[str, float]]:
    """One optimisation step = ``tc.grad_accum`` micro-batches of ``engine.backward`` +
    ``engine.step`` (the engine steps the optimizer on the last one). SFT (``method`` None) or an
    ``UnlearnMethod``'s ``loss``; custom-step methods are refused. A non-finite loss stops the run
    before its backward."""
    from unlearn_core.methods.base import ensure_finite

    if method is not None and method.custom_step:
        raise ValueError(
            f"method {method.name!r} does its own optimizer steps: not supported under DeepSpeed"
        )

    def micro_batch() -> tuple[torch.Tensor, dict[str, float]]:
        if method is None:
            return sft_loss(engine, next(batches["train"])), {}
        forget = next(batches["forget"])
        retain = next(batches["retain"]) if "retain" in batches else None
        return method.loss(engine, forget, retain, ref)

    def step_fn(step: int) -> dict[str, float]:
        apply_lr_schedule(engine.optimizer, tc, step)
        window: list[dict[str, float]] = []
        for _ in range(tc.grad_accum):
            loss, stats = micro_batch()
            ensure_finite("loss", loss, stats)
            engine.backward(loss)  # scales by 1 / gradient_accumulation_steps itself
            engine.step()  # optimizer step (with clipping) only at the accumulation boundary
            window.append({**stats, "loss": float(loss.detach())})
        keys = sorted({k for d in window for k in d})
        out = {k: float(np.mean([d[k] for d in window if k in d])) for k in keys}
        norm = engine.get_global_grad_norm()
        out["grad_norm"] = float(norm) if norm is not None else float("nan")
        return out

    return naming_the_step(step_fn)


def save_ds_checkpoint(engine: DeepSpeedEngine, folder: Path, step: int) -> bool:
    """Call on every rank: each writes its ZeRO shard under ``folder/deepspeed``; rank 0 also
    writes ``trainer_state.json``. Returns True (every rank reports its folder)."""
    tag = f"step{step}"
    engine.save_checkpoint(str(Path(folder) / DS_SUBDIR), tag=tag)
    if engine.global_rank == 0:
        meta = {
            "step": step,
            "deepspeed_tag": tag,
            "deepspeed_stage": engine.zero_optimization_stage(),
            "world_size": engine.world_size,
            "rng_torch": torch.get_rng_state().tolist(),
        }
        (Path(folder) / STATE_FILE).write_text(json.dumps(meta))
    return True


def load_ds_checkpoint(engine: DeepSpeedEngine, folder: Path) -> int:
    """Call on every rank: restore weights, optimizer state and RNG; return the step to continue from.

    DeepSpeed's checkpoint files are torch pickles: load only checkpoints your own runs wrote.
    """
    folder = Path(folder)
    meta = json.loads((folder / STATE_FILE).read_text())
    path, _ = engine.load_checkpoint(
        str(folder / DS_SUBDIR),
        tag=meta["deepspeed_tag"],
        load_optimizer_states=True,
        load_lr_scheduler_states=False,
    )
    if path is None:
        raise RuntimeError(f"{folder}: DeepSpeed found no checkpoint tag {meta['deepspeed_tag']!r} to load")
    torch.set_rng_state(torch.tensor(meta["rng_torch"], dtype=torch.uint8))
    return int(meta["step"])


@contextlib.contextmanager
def full_weights(engine: DeepSpeedEngine) -> Iterator[torch.nn.Module]:
    """Call on every rank: yields ``engine.module`` with full (unpartitioned) weights.

    Under ZeRO-3 the parameters are all-gathered onto every rank and the ZeRO forward hooks are
    removed for the duration, so rank 0 alone may run ``generate`` or ``save_pretrained``
    (peak memory: one full copy of the model per rank). ZeRO-2 keeps full weights anyway.
    """
    if engine.zero_optimization_stage() != 3:
        yield engine.module
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield engine.module
