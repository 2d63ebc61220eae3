"""Random-label tuning, a PUBG baseline: NLL of another entity's answer on the forget prompts (the
``rand_`` view) [+ alpha * NLL_r]."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from unlearn_core.method_params import RandomLabelParams
from unlearn_core.methods.base import ShardView
from unlearn_core.methods.reject import Reject


def other_entity_answers(rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, str]:
    """For each forget row: the answer another (retain) entity gives to the same task and question,
    drawn with ``seed`` (forget rows whose question no retain entity answers get none)."""
    pool: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in rows:
        if r["split"] == "retain":
            key = (r["task"], _question_key(r["question"], r["task"]))
            pool.setdefault(key, []).append((r["entity_id"], r["answer"]))
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for r in rows:
        if r["split"] != "forget":
            continue
        key = (r["task"], _question_key(r["question"], r["task"]))
        cands = [a for e, a in pool.get(key, []) if e != r["entity_id"]]
        if cands:
            out[r["sample_id"]] = rng.choice(sorted(set(cands)))
    return out


def _question_key(question: str, task: str) -> str:
    # Text-only questions name the entity, so pooling by exact text would find no other entity.
    return task if task in ("text_qa", "mc_text") else question


class RandomLabel(Reject):
    name = "random"
    Params = RandomLabelParams
    params: RandomLabelParams
    views = ("rand_",)
    shard_views = (ShardView("rand_", other_entity_answers, "no other person answers the same question"),)
    prefix = "rand_"
    stat = "rand_nll"
