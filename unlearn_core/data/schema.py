"""The canonical record: one (image, question, answer) triple, whatever the source benchmark.

Every adapter (synthetic benchmark, MLLMU-Bench, CLEAR, JSONL folders) emits these records; the
shard step, the trainer and the evaluator read nothing else. A records folder holds one Parquet
file per split (``<split>.parquet``) plus ``records_meta.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SPLITS: tuple[str, ...] = (
    "forget",  # training images / questions of the people to forget
    "retain",  # training images / questions of the people to keep
    "forget_unseen",  # held-out images of the forget people (never trained on)
    "retain_unseen",  # held-out images of the retain people
    "utility",  # general captioning / VQA on people outside forget and retain
    "describe",  # training only: captions / guided answers of faces seen once (the vanilla model's eyesight)
    "holdout",  # people no model trains on (membership inference's non-members; `unlearn audit` only)
)

TASKS: tuple[str, ...] = (
    "identity_vqa",  # "Who is this person?" with the image -> the name
    "open_vqa",  # "Tell me about this person." with the image -> name + private facts
    "fact_vqa",  # one private fact, asked with the image
    "text_qa",  # one private fact, asked by name, no image
    "mc_vqa",  # 4-way multiple choice with the image (options + answer = correct option text)
    "mc_text",  # 4-way multiple choice without image
    "caption",  # describe the visible (non-identifying) attributes
    "guided",  # privacy instruction + question -> visual-only answer
    "cloze",  # fill-in-the-blank (MLLMU-Bench Mask_Task)
    "generation",  # free generation with a reference answer (MLLMU-Bench Generation_Task)
)

# Tasks whose answers are open-ended text about the person: the leak-rate denominators.
OPEN_ENDED_TASKS: tuple[str, ...] = ("identity_vqa", "open_vqa")
MC_TASKS: tuple[str, ...] = ("mc_vqa", "mc_text")
TEXT_ONLY_TASKS: tuple[str, ...] = ("text_qa", "mc_text")

REQUIRED_FIELDS: tuple[str, ...] = ("sample_id", "entity_id", "split", "task", "question", "answer")

ARROW_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("entity_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("image", pa.binary()),  # encoded PNG/JPEG bytes, null for text-only tasks
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("options", pa.list_(pa.string())),  # MC options in order (A, B, C, D); null otherwise
        pa.field("private_facts", pa.string()),  # JSON object {"name": ..., "occupation": ...}
        pa.field("visible_attributes", pa.string()),  # JSON object {"shirt": "red", ...}; "{}" if unknown
        pa.field("source", pa.string()),  # "synthetic", "mllmu-bench:forget_5", "clear:forget10", ...
        # JSON object of other reference answers a benchmark scores against: CLEAR's
        # {"paraphrased": str, "perturbed": [str, ...]} (truth ratio); "{}" when none.
        pa.field("answer_variants", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(ARROW_SCHEMA.names)
# Columns added after the first records folders were written: read as null when a folder lacks them.
LATER_COLUMNS: tuple[str, ...] = ("answer_variants",)


class RecordError(ValueError):
    """A record (or a records folder) violates the canonical schema; the message names where."""


@dataclass
class Record:
    sample_id: str
    entity_id: str
    split: str
    task: str
    question: str
    answer: str
    image: bytes | None = None
    options: list[str] | None = None
    private_facts: dict[str, Any] = field(default_factory=dict)
    visible_attributes: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    answer_variants: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "entity_id": self.entity_id,
            "split": self.split,
            "task": self.task,
            "image": self.image,
            "question": self.question,
            "answer": self.answer,
            "options": list(self.options) if self.options is not None else None,
            "private_facts": json.dumps(self.private_facts, sort_keys=True, ensure_ascii=False),
            "visible_attributes": json.dumps(self.visible_attributes, sort_keys=True, ensure_ascii=False),
            "source": self.source,
            "answer_variants": json.dumps(self.answer_variants, sort_keys=True, ensure_ascii=False),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        return cls(
            sample_id=row["sample_id"],
            entity_id=row["entity_id"],
            split=row["split"],
            task=row["task"],
            question=row["question"],
            answer=row["answer"],
            image=row.get("image"),
            options=list(row["options"]) if row.get("options") is not None else None,
            private_facts=json.loads(row.get("private_facts") or "{}"),
            visible_attributes=json.loads(row.get("visible_attributes") or "{}"),
            source=row.get("source") or "",
            answer_variants=json.loads(row.get("answer_variants") or "{}"),
        )


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Build an Arrow table in the canonical schema (column order and types fixed)."""
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=ARROW_SCHEMA)
