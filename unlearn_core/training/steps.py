"""One optimisation step on the plain (DDP or single-process) path, and the pieces both paths share.

``make_step`` builds ``step(step_index) -> stats`` for the vanilla fine-tune or an unlearning
method. ``train.grad_accum`` is honoured everywhere: the fine-tune and every method with the
``backward`` / ``optimizer_step`` split accumulate that many micro-batches per update (DDP syncs
gradients on the last one only); methods with their own optimizer steps are refused with
``grad_accum > 1`` by ``worker.check_supported``. A NaN / inf loss or gradient norm stops the run
before the update is applied: ``NonFiniteLossError`` names the step and the loss terms (the last
checkpoint stays the last good state; skipping would hide a diverging ascent).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unlearn_core.config import TrainConfig
from unlearn_core.methods.base import NonFiniteLossError, ensure_finite, forward_logits, nll
from unlearn_core.methods.losses import select_answer_positions

Batches = dict[str, Iterator[dict[str, Any]]]
StepFn = Callable[[int], dict[str, float]]


def apply_lr_schedule(optimizer: torch.optim.Optimizer, tc: TrainConfig, step: int) -> None:
    """Linear warm-up then cosine decay to 10% of the peak learning rate."""
    if step < tc.warmup_steps:
        scale = (step + 1) / tc.warmup_steps
    else:
        progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * scale


# Batch key of length-grouped streams: the epoch's mean answer tokens per batch (a constant).
ANSWER_TOKEN_NORM = "answer_tokens_per_batch"


def sft_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Cross-entropy over answer tokens (labels are -100 elsewhere): their mean in the batch.

    A length-grouped batch (``train.group_by_length``) holds rows of one kind (all short text
    answers, or all long guided ones), so a per-batch mean would give a 2-token answer the weight of
    a 40-token one. Its summed cross-entropy is divided by the epoch's mean answer tokens per batch
    instead, which weighs every token as a random batch does on average.
    """
    norm = batch.get(ANSWER_TOKEN_NORM)
    if norm is None:
        return nll(model, batch, "")
    logits, labels = forward_logits(model, batch, "")
    sel, targets, _ = select_answer_positions(logits, labels)
    return F.cross_entropy(sel, targets, reduction="sum") / float(norm)


def mean_stats(window: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in window for k in d})
    return {k: float(np.mean([d[k] for d in window if k in d])) for k in keys}


def naming_the_step(step_fn: StepFn) -> StepFn:
    """Re-raise a non-finite loss with the step it happened at."""

    def guarded(step: int) -> dict[str, float]:
        try:
            return step_fn(step)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(f"step {step}: {err}") from None

    return guarded


def _no_sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync`` on every micro-batch but the last of an accumulation window."""
    if not last and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def make_step(
    method: Any,
    ref: torch.nn.Module | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    tc: TrainConfig,
) -> StepFn:
    """The plain-path step of the fine-tune (``method`` None) or of an unlearning method."""
    accum = tc.grad_accum

    def sft_step(step: int) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(accum):
            with _no_sync(model, i == accum - 1):
                loss = sft_loss(model, next(batches["train"]))
                ensure_finite("loss", loss, {"sft_nll": float(loss.detach())})
                (loss / accum).backward()
            total += float(loss.detach()) / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], tc.max_grad_norm
        )
        ensure_finite("gradient norm", grad_norm, {"loss": total})
        apply_lr_schedule(optimizer, tc, step)
        optimizer.step()
        return {"loss": total, "grad_norm": float(grad_norm)}

    def own_step(step: int) -> dict[str, float]:
        forget = next(batches["forget"]) if method.uses_forget_batch(step) else None
        retain = next(batches["retain"]) if "retain" in batches else None
        apply_lr_schedule(optimizer, tc, step)
        return method.train_step(model, optimizer, forget, retain, ref, step, max_grad_norm=tc.max_grad_norm)

    def accumulated_step(step: int) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        window = []
        for i in range(accum):
            forget = next(batches["forget"])
            retain = next(batches["retain"]) if "retain" in batches else None
            with _no_sync(model, i == accum - 1):
                window.append(method.backward(model, forget, retain, ref, scale=1.0 / accum))
        stats = mean_stats(window)
        apply_lr_schedule(optimizer, tc, step)
        stats.update(method.optimizer_step(model, optimizer, max_grad_norm=tc.max_grad_norm, stats=stats))
        return stats

    if method is None:
        return naming_the_step(sft_step)
    if method.custom_step:
        if accum > 1:
            raise ValueError(
                f"method {method.name!r} does its own optimizer steps: train.grad_accum must be 1"
            )
        return naming_the_step(own_step)
    return naming_the_step(accumulated_step)
