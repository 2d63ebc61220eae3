"""Relearning as an attack: a few fine-tuning steps on some rows, the figures measured on others.

The same optimiser (AdamW, no weight decay), learning rate, batch size and batch order run on the
audited model and on the retrained reference, so at equal steps the gap between the two is what the
audited model still held (Che et al., TMLR 2025; Deeb & Roger; Hu et al., ICLR 2025). Every parameter
trains (a full fine-tune, as an attacker with the weights would).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from unlearn_core.audit.rows import Row
from unlearn_core.data.encode import collate, model_inputs
from unlearn_core.eval.runner import row_image
from unlearn_core.methods.losses import answer_nll
from unlearn_core.models.generate import to_model


def batch_order(rows: Sequence[Row], steps: int, batch_size: int, seed: int) -> list[list[Row]]:
    """The batches of ``steps`` steps: epochs of a seeded shuffle of ``rows`` (sample-id order first)."""
    if not rows:
        raise ValueError("relearning needs rows to train on")
    ordered = sorted(rows, key=lambda r: r["sample_id"])
    rng = random.Random(seed)
    out: list[list[Row]] = []
    pool: list[Row] = []
    while len(out) < steps:
        if len(pool) < batch_size:
            epoch = ordered[:]
            rng.shuffle(epoch)
            pool += epoch
        out.append(pool[:batch_size])
        pool = pool[batch_size:]
    return out


def fine_tune(
    model: nn.Module,
    processor: Any,
    rows: Sequence[Row],
    *,
    steps: int,
    lr: float = 5e-4,
    batch_size: int = 8,
    seed: int = 0,
    after_step: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Train ``model`` in place on ``rows`` (answer-token NLL, AdamW without weight decay) for ``steps``
    steps; ``after_step(step)`` after each. Returns the sample ids of every step's batch."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    trained: list[list[str]] = []
    for step, batch_rows in enumerate(batch_order(rows, steps, batch_size, seed), start=1):
        chunk = [{**r, "image": row_image(dict(r))} for r in batch_rows]
        batch = to_model(collate(chunk, processor), model)
        loss = answer_nll(model(**model_inputs(batch)).logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trained.append([str(r["sample_id"]) for r in batch_rows])
        if after_step is not None:
            after_step(step)
            model.train()
    return trained


def relearn(
    model: nn.Module,
    processor: Any,
    rows: Sequence[Row],
    *,
    checkpoints: Sequence[int],
    measure: Callable[[nn.Module], dict[str, Any]],
    lr: float = 5e-4,
    batch_size: int = 8,
    seed: int = 0,
    measure_start: bool = True,
) -> tuple[dict[int, dict[str, Any]], list[list[str]]]:
    """Fine-tune a copy of ``model`` on ``rows`` up to the last checkpoint; ``measure`` the copy at every
    checkpoint (and at step 0 with ``measure_start``). Returns the figures by step and the sample ids of
    every step's batch (``model`` itself is left as it was)."""
    student = copy.deepcopy(model)
    figures = {0: measure(student)} if measure_start else {}

    def at(step: int) -> None:
        if step in checkpoints:
            figures[step] = measure(student)

    trained = fine_tune(
        student,
        processor,
        rows,
        steps=max(checkpoints),
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        after_step=at,
    )
    return figures, trained
