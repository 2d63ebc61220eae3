"""Which shard rows feed which training stream.

- vanilla fine-tune: every trainable task of the forget and retain splits;
- unlearning, forget stream: the *visual* forget set, questions about a forget person asked with
  their image (identity, open description, facts);
- unlearning, retain stream: the retain split plus what we keep of the forget people: their
  text-only QA (MMUnlearner: keep the LLM's knowledge), captions and guided answers.
Multiple-choice rows are evaluation-only (their answers duplicate the open tasks).
"""

from __future__ import annotations

from unlearn_core.data.schema import MC_TASKS, TASKS

TRAINABLE_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t not in MC_TASKS)
FORGET_TRAIN_TASKS: tuple[str, ...] = ("identity_vqa", "open_vqa", "fact_vqa")
FORGET_KEPT_TASKS: tuple[str, ...] = ("text_qa", "caption", "guided")


def in_stream(stream: str, split: str, task: str) -> bool:
    if stream == "train":
        return split in ("forget", "retain") and task in TRAINABLE_TASKS
    if stream == "forget":
        return split == "forget" and task in FORGET_TRAIN_TASKS
    if stream == "retain":
        return (split == "retain" and task in TRAINABLE_TASKS) or (split == "forget" and task in FORGET_KEPT_TASKS)
    raise ValueError(f"unknown stream {stream!r}; valid: train, forget, retain")
