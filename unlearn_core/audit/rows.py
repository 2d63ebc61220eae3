"""Which shard rows each audit check reads: fixed, seeded, and never the rows a check trains on.

Groups (shard rows: ``sample_id``, ``entity_id``, ``split``, ``task``, question / answer / options,
``private_facts``, ``input_ids`` / ``labels`` and the image as ``image_u8`` + ``image_hw`` or ``image``):

- membership: the forget set as unlearning sees it (``identity_vqa``, ``open_vqa``, ``fact_vqa`` of the
  forget people on their training images) against the same tasks of the ``holdout`` people (person
  level) and of the forget people's ``forget_unseen`` images (image level);
- forget figures: identity / open answers (leak rate) and multiple choice (VQA accuracy) on forget
  and forget_unseen images;
- relearning: T = identity and open questions on the first half of each forget person's training
  images; V = everything measured on their other images (forget_unseen included), so no V image is
  ever in a relearning batch;
- benign relearning: identity and open questions of the first half of the retain people;
- utility: multiple choice of the other half of the retain people and utility captions (seeded
  samples), and that half's identity / open rows for the probes' controls.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unlearn_core.data.schema import MC_TASKS, OPEN_ENDED_TASKS
from unlearn_core.data.selection import FORGET_TRAIN_TASKS
from unlearn_core.eval.text_checks import entity_name

Row = Mapping[str, Any]
MIA_TASKS: tuple[str, ...] = FORGET_TRAIN_TASKS  # the rows unlearning is asked to forget


def facts_of(row: Row) -> dict[str, Any]:
    value = row.get("private_facts")
    if isinstance(value, str):
        return json.loads(value) if value.strip() else {}
    return dict(value or {})


def image_key(row: Row) -> str | None:
    """Identity of a row's image (its pixels), so rows asking different questions of one image group."""
    raw = row.get("image_u8")
    if raw is None and row.get("image") is not None:
        raw = np.ascontiguousarray(np.asarray(row["image"], dtype=np.uint8)).tobytes()
    return None if raw is None else hashlib.sha1(bytes(raw)).hexdigest()[:16]


def _sample(rows: Sequence[Row], n: int, seed: str) -> list[Row]:
    rows = sorted(rows, key=lambda r: r["sample_id"])
    return rows if len(rows) <= n else random.Random(seed).sample(rows, n)


@dataclass(frozen=True)
class AuditRows:
    member: list[Row]  # forget rows of the tasks the holdout rows have (person level)
    member_image: list[Row]  # forget rows of the tasks the forget_unseen rows have (image level)
    unseen: list[Row]
    holdout: list[Row]
    leak_seen: list[Row]
    leak_unseen: list[Row]
    vqa_seen: list[Row]
    vqa_unseen: list[Row]
    relearn_train: list[Row]
    relearn_leak: list[Row]
    relearn_identity: list[Row]
    benign_train: list[Row]
    utility_vqa: list[Row]
    utility_caption: list[Row]
    control_open: list[Row]
    control_unseen: list[Row]
    people: dict[str, dict[str, Any]]  # forget entity -> private facts (by-name probes)
    control_people: dict[str, dict[str, Any]]  # retain entities of the utility half -> facts
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items() if isinstance(v, list) and k != "notes"}


def _identity_mc(row: Row) -> bool:
    """A multiple-choice row whose correct option is the person's name (identity VQA)."""
    name = entity_name(facts_of(row))
    return bool(name) and str(row["answer"]).strip().rstrip(".") == name


def select_audit_rows(
    rows: Iterable[Row],
    *,
    seed: int = 0,
    max_utility_vqa: int = 64,
    max_captions: int = 32,
    max_control: int = 32,
) -> AuditRows:
    """The audit's row groups from shard rows (every split the shards hold)."""
    by_split: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_split[str(r["split"])].append(r)
    for v in by_split.values():
        v.sort(key=lambda r: r["sample_id"])
    forget, unseen = by_split["forget"], by_split["forget_unseen"]
    if not forget:
        raise ValueError("the shards hold no forget rows: nothing to audit")
    notes: list[str] = []
    tasks = set(MIA_TASKS) & {r["task"] for r in forget}
    if not tasks:  # e.g. CLEAR, whose forget set is captions: its generative forget rows
        tasks = {r["task"] for r in forget if r["task"] not in MC_TASKS}
        notes.append(
            f"membership on the forget split's {sorted(tasks)} rows (it has none of {list(MIA_TASKS)})"
        )
    # Each level compares the same tasks on both sides: a task mix that differs would tell them apart.
    holdout_tasks = tasks & {r["task"] for r in by_split["holdout"]}
    image_tasks = tasks & {r["task"] for r in unseen}
    holdout = [r for r in by_split["holdout"] if r["task"] in holdout_tasks]
    if not holdout:
        notes.append(
            "person-level membership absent: the records have no holdout people (people no model trains "
            "on; the synthetic benchmark has them, MLLMU-Bench and CLEAR do not)"
        )
    if not image_tasks:
        notes.append(f"image-level membership absent: no forget_unseen rows of the tasks {sorted(tasks)}")

    # Relearning: T = identity/open questions on the first half of each forget person's images.
    images: dict[str, list[str]] = defaultdict(list)
    for r in forget:
        key = image_key(r)
        if key is not None and key not in images[r["entity_id"]]:
            images[r["entity_id"]].append(key)  # in sample-id order: image 0, 1, ... of the person
    relearn_images = {k for keys in images.values() for k in keys[: max(1, len(keys) // 2)]}
    relearn_train = [r for r in forget if r["task"] in OPEN_ENDED_TASKS and image_key(r) in relearn_images]
    rest = [r for r in forget + unseen if image_key(r) not in relearn_images]
    relearn_leak = [r for r in rest if r["task"] in OPEN_ENDED_TASKS]
    relearn_identity = [r for r in rest if r["task"] == "mc_vqa" and _identity_mc(r)]

    retain_people = sorted({r["entity_id"] for r in by_split["retain"]})
    benign_people = set(retain_people[: len(retain_people) // 2])
    kept = set(retain_people) - benign_people
    benign_train = [
        r for r in by_split["retain"] if r["entity_id"] in benign_people and r["task"] in OPEN_ENDED_TASKS
    ]
    utility_vqa = _sample(
        [r for r in by_split["retain"] if r["entity_id"] in kept and r["task"] == "mc_vqa"],
        max_utility_vqa,
        f"{seed}/utility_vqa",
    )
    captions = [r for r in by_split["utility"] if r["task"] == "caption"]
    control_open = _sample(
        [r for r in by_split["retain"] if r["entity_id"] in kept and r["task"] in OPEN_ENDED_TASKS],
        max_control,
        f"{seed}/control",
    )
    control_unseen = _sample(
        [r for r in by_split["retain_unseen"] if r["entity_id"] in kept and r["task"] in OPEN_ENDED_TASKS],
        max_control,
        f"{seed}/control_unseen",
    )
    people = {r["entity_id"]: facts_of(r) for r in forget if facts_of(r)}
    control_people = {r["entity_id"]: facts_of(r) for r in control_open if facts_of(r)}
    return AuditRows(
        member=[r for r in forget if r["task"] in holdout_tasks],
        member_image=[r for r in forget if r["task"] in image_tasks],
        unseen=[r for r in unseen if r["task"] in image_tasks],
        holdout=holdout,
        leak_seen=[r for r in forget if r["task"] in OPEN_ENDED_TASKS],
        leak_unseen=[r for r in unseen if r["task"] in OPEN_ENDED_TASKS],
        vqa_seen=[r for r in forget if r["task"] == "mc_vqa"],
        vqa_unseen=[r for r in unseen if r["task"] == "mc_vqa"],
        relearn_train=relearn_train,
        relearn_leak=relearn_leak,
        relearn_identity=relearn_identity,
        benign_train=benign_train,
        utility_vqa=utility_vqa,
        utility_caption=_sample(captions, max_captions, f"{seed}/captions"),
        control_open=control_open,
        control_unseen=control_unseen,
        people=dict(sorted(people.items())),
        control_people=dict(sorted(control_people.items())),
        notes=notes,
    )
