"""One shard row per record: the image decoded and resized to uint8, the model's processor and chat
template applied with answer-only labels, and for forget rows the extra views the registered methods
declare (``shard_views``: e.g. ``idk_``, a refusal answer for `reject`; ``rand_``, another entity's
answer for `random`), each as ``{prefix}input_ids`` / ``{prefix}labels``. A row that fails is
kept with its ``quarantine_reason``, never dropped. ``answer_variants`` (JSON, nullable) is carried as
the records hold it: CLEAR's paraphrased / perturbed captions, which `unlearn eval` scores for the
truth ratio."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from unlearn_core.data.encode import encode_example, prepare_image
from unlearn_core.methods import shard_views


def view_answers(table: pa.Table, seed: int) -> dict[str, dict[str, str]]:
    """Per view prefix of the registered methods: the answer each forget row's view encodes
    (``sample_id -> answer``), in registry order."""
    rows = table.select(["sample_id", "entity_id", "split", "task", "question", "answer"]).to_pylist()
    return {view.prefix: view.answers(rows, seed) for view in shard_views()}


class RowEncoder:
    """Ray Data callable class: one processor per actor, reused across batches."""

    def __init__(self, processor_dir: str, image_size: int, answers: dict[str, dict[str, str]]) -> None:
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(processor_dir)
        self.image_size = image_size
        self.answers = answers  # view prefix -> sample_id -> answer (see view_answers)
        self.schema = shard_schema(tuple(answers))

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["sample_id"])
        out: dict[str, list[Any]] = {k: [] for k in self.schema.names}
        for i in range(n):
            row = {k: batch[k][i] for k in batch}
            try:
                enc = self._encode_row(row)
            except Exception as exc:  # noqa: BLE001 - every failure is quarantined with its reason
                enc = quarantine_row(row, f"{type(exc).__name__}: {exc}")
            for k in self.schema.names:
                out[k].append(enc.get(k))
        return pa.Table.from_pydict(out, schema=self.schema)

    def _encode_row(self, row: dict[str, Any]) -> dict[str, Any]:
        image = None
        h = w = 0
        raw = row.get("image")
        if raw is not None and len(raw) > 0:
            arr = prepare_image(bytes(raw), self.image_size)
            h, w = int(arr.shape[0]), int(arr.shape[1])
            image = arr
        enc = encode_example(
            self.processor,
            question=row["question"],
            answer=row["answer"],
            image=image,
            image_size=self.image_size,
        )
        result: dict[str, Any] = {
            "sample_id": row["sample_id"],
            "entity_id": row["entity_id"],
            "split": row["split"],
            "task": row["task"],
            "question": row["question"],
            "answer": row["answer"],
            "options": list(row["options"]) if row.get("options") is not None else None,
            "private_facts": row.get("private_facts") or "{}",
            "visible_attributes": row.get("visible_attributes") or "{}",
            "answer_variants": row.get("answer_variants"),  # null in records written before the column
            "image_u8": image.tobytes() if image is not None else None,
            "image_hw": [h, w] if image is not None else None,
            "input_ids": enc["input_ids"],
            "labels": enc["labels"],
            "quarantine_reason": None,
        }
        if row["split"] == "forget":
            for prefix, per_row in self.answers.items():
                answer = per_row.get(row["sample_id"])
                if answer is None:
                    continue
                view = encode_example(
                    self.processor,
                    question=row["question"],
                    answer=answer,
                    image=image,
                    image_size=self.image_size,
                )
                result[f"{prefix}input_ids"], result[f"{prefix}labels"] = view["input_ids"], view["labels"]
        return result


_BASE_FIELDS = [
    ("sample_id", pa.string()), ("entity_id", pa.string()), ("split", pa.string()), ("task", pa.string()),
    ("question", pa.string()), ("answer", pa.string()), ("options", pa.list_(pa.string())),
    ("private_facts", pa.string()), ("visible_attributes", pa.string()), ("answer_variants", pa.string()),
    ("image_u8", pa.binary()), ("image_hw", pa.list_(pa.int32())),
    ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
]  # fmt: skip


def shard_schema(prefixes: tuple[str, ...]) -> pa.Schema:
    """The base columns, two token columns per view, then ``quarantine_reason`` (dropped on write)."""
    views = [(f"{p}{c}", pa.list_(pa.int32())) for p in prefixes for c in ("input_ids", "labels")]
    return pa.schema([*_BASE_FIELDS, *views, ("quarantine_reason", pa.string())])


SHARD_SCHEMA = shard_schema(tuple(v.prefix for v in shard_views()))  # what the registered methods need


def quarantine_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    keep = {k: row.get(k) for k in ("sample_id", "entity_id", "split", "task", "question", "answer")}
    return {**keep, "quarantine_reason": reason}
