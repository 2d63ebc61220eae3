"""Run a model over evaluation rows: greedy generations for open tasks, option scores for MC tasks.

Rows are shard rows (``question``, ``options``, ``image_u8`` + ``image_hw`` or a decoded ``image``
array, ``task``, ...). The metrics themselves live in :mod:`unlearn_core.eval.metrics`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from unlearn_core.data.schema import MC_TASKS
from unlearn_core.data.shard_image import decode_image_u8
from unlearn_core.eval.protocols import Protocol, get_protocol, has_image

# Version of what an evaluation selects and scores: part of every cache key of an evaluation result,
# so results cached by an older version are computed again. Bump it when either changes.
# 2: retain_unseen guided answers evaluated (eyesight metric); one sampler per (split, task).
# 3: MLLMU-Bench few-shot prompts (the examples' people's own questions left out).
EVAL_VERSION = 3

EVAL_TASKS: dict[str, tuple[str, ...]] = {
    "forget": ("identity_vqa", "open_vqa", "mc_vqa", "mc_text", "guided"),
    "forget_unseen": ("identity_vqa", "open_vqa", "mc_vqa", "guided"),
    "retain": ("identity_vqa", "open_vqa", "mc_vqa", "mc_text", "guided"),
    "retain_unseen": ("identity_vqa", "mc_vqa", "guided"),
    "utility": ("caption",),
    # Real benchmarks: their own task families, wherever they appear.
    "*": ("cloze", "generation"),
}


def row_image(row: dict[str, Any]) -> np.ndarray | None:
    if row.get("image") is not None:
        return np.asarray(row["image"], dtype=np.uint8)
    return decode_image_u8(row.get("image_u8"), row.get("image_hw"), where=f"row {row.get('sample_id')}")


def select_eval_rows(
    rows: list[dict[str, Any]],
    max_per_group: int,
    seed: int = 0,
    *,
    every_task: bool = False,
    few_shot: bool = False,
) -> list[dict[str, Any]]:
    """A fixed, seeded subsample of at most ``max_per_group`` rows per (split, task) that is evaluated.

    ``EVAL_TASKS`` picks the tasks (the synthetic protocol); ``every_task`` (the benchmark protocols)
    keeps every converted task of every split. Each group draws from its own generator (seeded by
    ``seed``, split and task), so adding or removing a group never changes another group's sample.
    ``few_shot`` (MLLMU-Bench): the people drawn as examples (seeded by ``seed``) have their own
    questions left out first, and every classification / cloze row gets its examples as ``few_shot``
    (a ``FewShot``, shared by the rows of one split, family and modality).
    """
    plans: dict[str, Any] = {}
    if few_shot:
        from unlearn_core.eval.few_shot import plan_few_shot

        rows, plans = plan_few_shot(rows, seed)  # type: ignore[assignment]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        wanted = EVAL_TASKS.get(r["split"], ()) + EVAL_TASKS["*"]
        if every_task or r["task"] in wanted:
            groups[(r["split"], r["task"])].append(r)
    out: list[dict[str, Any]] = []
    for split, task in sorted(groups):
        g = sorted(groups[(split, task)], key=lambda r: r["sample_id"])
        rng = random.Random(f"{seed}/{split}/{task}")  # str seeds hash with SHA-512: stable across runs
        out.extend(g if len(g) <= max_per_group else rng.sample(g, max_per_group))
    if plans:
        from unlearn_core.eval.few_shot import few_shot_key

        out = [{**r, "few_shot": plans[k]} if (k := few_shot_key(r)) in plans else r for r in out]
    return out


@torch.no_grad()
def model_outputs(
    model: torch.nn.Module,
    processor: Any,
    rows: list[dict[str, Any]],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    protocol: Protocol | None = None,
) -> dict[str, dict[str, Any]]:
    """sample_id -> {"generation": str} or {"option_scores": [...]} for every row; under ``clear``, rows
    with paraphrased + perturbed captions also get their truth-ratio losses, and FaceRec / real_* rows
    their answer-against-wrong-ones losses and open answer (``truth_losses.clear_losses``).

    The protocol (default ``synthetic``) gives each row its question text and decoding length and says
    whether multiple choice is a generated letter or option log-probs; ``max_new_tokens`` overrides
    the protocol's lengths.
    """
    from unlearn_core.eval.truth_losses import against_specs, clear_losses
    from unlearn_core.models.generate import generate, score_options_many

    protocol = protocol or get_protocol("synthetic")
    outputs: dict[str, dict[str, Any]] = {}
    gen_rows = [r for r in rows if protocol.generated_mc or r["task"] not in MC_TASKS]
    by_length: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in gen_rows:
        by_length[max_new_tokens or protocol.max_new_tokens(r)].append(r)
    for length, group in sorted(by_length.items()):
        prompts = [_prompt(r, protocol, processor) for r in group]
        texts = generate(model, processor, prompts, max_new_tokens=length, batch_size=batch_size)
        for r, t in zip(group, texts, strict=True):
            outputs[r["sample_id"]] = {"generation": t}
    scored = [r for r in rows if r["task"] in MC_TASKS and not protocol.generated_mc]
    items = [(r["question"], row_image(r), list(r["options"])) for r in scored]
    for r, scores in zip(scored, score_options_many(model, processor, items), strict=True):
        outputs[r["sample_id"]] = {"option_scores": [float(s) for s in scores]}
    if protocol.name == "clear":
        # CLEAR's open reading of its FaceRec / real_* rows: the answer to the task's own question
        opens = [(r, task, spec["question"]) for r in rows for task, spec in against_specs(r).items()]
        prompts = [{"question": question, "image": row_image(r)} for r, _, question in opens]
        texts = generate(
            model,
            processor,
            prompts,
            max_new_tokens=max_new_tokens or protocol.open_tokens,
            batch_size=batch_size,
        )
        for (r, task, _), text in zip(opens, texts, strict=True):
            outputs.setdefault(r["sample_id"], {})[f"{task}_generation"] = text
        for r in rows:
            losses = clear_losses(model, processor, r, row_image(r))
            if losses:
                outputs.setdefault(r["sample_id"], {}).update(losses)
    return outputs


def _prompt(row: dict[str, Any], protocol: Protocol, processor: Any) -> dict[str, Any]:
    """What ``generate`` is given for ``row``: the protocol's question in the chat template, or, for a
    row carrying MLLMU-Bench few-shot examples (``few_shot``, see ``select_eval_rows``), the
    reference's raw few-shot prompt with the examples' images before the row's own."""
    shots = row.get("few_shot") if protocol.few_shot else None
    if shots is None:
        return {"question": protocol.prompt(row), "image": row_image(row)}
    from unlearn_core.eval.few_shot import few_shot_prompt

    token = str(getattr(processor, "image_token", None) or "<image>")
    images = [row_image(dict(ex)) for ex in shots.examples if has_image(ex)]
    own = row_image(row)
    return {
        "text": few_shot_prompt(row, shots.examples, token),
        "images": [*images, own] if own is not None else [],
    }


# Rows per generation call of a final evaluation, in order: Ray Data batch evaluation
# (``unlearn eval``) and the training workers' final evaluation cut the selected rows the same way, so
# both see the same batches and give the same outputs for the same weights.
EVAL_CHUNK = 64


def chunk_outputs(
    model: torch.nn.Module,
    processor: Any,
    rows: list[dict[str, Any]],
    *,
    protocol: Protocol | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, dict[str, Any]]:
    """``model_outputs`` over this rank's share of ``rows``: chunk i (``EVAL_CHUNK`` consecutive rows)
    belongs to rank ``i % world_size``; the ranks' dicts together cover every row once."""
    outputs: dict[str, dict[str, Any]] = {}
    for i, start in enumerate(range(0, len(rows), EVAL_CHUNK)):
        if i % world_size == rank:
            outputs.update(
                model_outputs(model, processor, rows[start : start + EVAL_CHUNK], protocol=protocol)
            )
    return outputs


def evaluate_model(
    model: torch.nn.Module, processor: Any, rows: list[dict[str, Any]], *, image_size: int = 64
) -> dict[str, float]:
    """Outputs + metrics for already-selected rows (used for in-training evaluation on rank 0), under
    the protocol the rows' benchmark implies, so a benchmark run's curves carry the benchmark's names."""
    from unlearn_core.eval.protocols import resolve_protocol
    from unlearn_core.eval.score import score_outputs

    protocol = resolve_protocol(rows)
    was_training = model.training
    model.eval()
    try:
        outputs = model_outputs(model, processor, rows, protocol=protocol)
    finally:
        model.train(was_training)
    return score_outputs(rows, outputs, protocol)["metrics"]
