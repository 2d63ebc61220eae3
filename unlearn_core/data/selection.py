"""Which shard rows feed which training stream.

- vanilla fine-tune: every trainable task of the forget and retain splits, and the ``describe``
  split (captions and guided answers of faces seen once: the model learns to see, not to recall);
- unlearning, forget stream: the *visual* forget set, questions about a forget person asked with
  their image (identity, open description, facts);
- unlearning, retain stream: the retain split plus what we keep of the forget people: their
  text-only QA (MMUnlearner: keep the LLM's knowledge), captions and guided answers.
- retrained reference (`unlearn finetune --exclude-forget`): the vanilla fine-tune's rows without the
  forget stream's (``retrain_rows``: what every unlearning method is asked to forget; the forget
  people's text-only QA, captions and guided answers stay, as in the methods' retain stream) or
  without any row of the forget people (``retrain_people``).
Multiple-choice rows are evaluation-only (their answers duplicate the open tasks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import Any

from unlearn_core.data.schema import MC_TASKS, TASKS

TRAINABLE_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t not in MC_TASKS)
FORGET_TRAIN_TASKS: tuple[str, ...] = ("identity_vqa", "open_vqa", "fact_vqa")
FORGET_KEPT_TASKS: tuple[str, ...] = ("text_qa", "caption", "guided")


# How `unlearn finetune --exclude-forget` names what it leaves out -> its training stream.
RETRAIN_STREAMS: dict[str, str] = {"rows": "retrain_rows", "people": "retrain_people"}
# The shard splits each stream reads (rows are then kept by ``in_stream``).
STREAM_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("forget", "retain", "describe"),
    "retrain_rows": ("forget", "retain", "describe"),
    "retrain_people": ("retain", "describe"),
    "forget": ("forget", "retain"),
    "retain": ("forget", "retain"),
}


def in_stream(stream: str, split: str, task: str) -> bool:
    if stream in ("train", "retrain_people"):
        return split in STREAM_SPLITS[stream] and task in TRAINABLE_TASKS
    if stream == "retrain_rows":
        return in_stream("train", split, task) and not in_stream("forget", split, task)
    if stream == "forget":
        return split == "forget" and task in FORGET_TRAIN_TASKS
    if stream == "retain":
        return (split == "retain" and task in TRAINABLE_TASKS) or (
            split == "forget" and task in FORGET_KEPT_TASKS
        )
    raise ValueError(f"unknown stream {stream!r}; valid: {', '.join(STREAM_SPLITS)}")


def balanced_by_entity(rows: Sequence[Mapping[str, Any]], budget: int) -> list[Mapping[str, Any]]:
    """Up to ``budget`` rows spread evenly over entities (and over tasks within an entity).

    Round-robin: the first row of every entity, then the second, ... (entities and rows in a fixed
    order: entity id, then the tasks interleaved, each by sample id). A budget smaller than the
    number of entities still covers ``budget`` distinct ones; the first ``n`` rows of the order
    are the same whatever the budget, so a larger budget only adds rows.
    """
    by_entity: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for r in rows:
        by_entity.setdefault(str(r["entity_id"]), {}).setdefault(str(r["task"]), []).append(r)
    queues = []
    for entity in sorted(by_entity):
        tasks = [sorted(v, key=lambda r: r["sample_id"]) for _, v in sorted(by_entity[entity].items())]
        queues.append([r for group in zip_longest(*tasks) for r in group if r is not None])
    out: list[Mapping[str, Any]] = []
    for group in zip_longest(*queues):
        out.extend(r for r in group if r is not None)
        if len(out) >= budget:
            break
    return out[:budget]


def count_stream_rows(tables: Mapping[str, Any]) -> dict[str, int]:
    """Rows of the ``forget`` and ``retain`` training streams in shard tables (pyarrow tables with
    ``split`` and ``task`` columns), e.g. ``{"forget": 168, "retain": 3632}``."""
    counts = {"forget": 0, "retain": 0}
    for table in tables.values():
        for split, task in zip(table["split"].to_pylist(), table["task"].to_pylist(), strict=True):
            for stream in counts:
                counts[stream] += in_stream(stream, split, task)
    return counts
