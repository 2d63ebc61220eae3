"""One shard row per record: the image decoded and resized to uint8, the model's processor and chat
template applied with answer-only labels, and for forget rows the baselines' extra views (``idk_``:
a refusal answer for `reject`, ``rand_``: another entity's answer for `random`). A row that fails is
kept with its ``quarantine_reason``, never dropped. ``answer_variants`` (JSON, nullable) is carried as
the records hold it: CLEAR's paraphrased / perturbed captions, which `unlearn eval` scores for the
truth ratio."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa

from unlearn_core.data.encode import encode_example, prepare_image
from unlearn_core.prompts import REFUSAL_ANSWERS

VIEW_PREFIXES = ("idk_", "rand_")


def random_answers(table: pa.Table, seed: int) -> dict[str, str]:
    """For each forget row: the answer another (retain) entity gives to the same task and question."""
    rows = table.select(["sample_id", "entity_id", "split", "task", "question", "answer"]).to_pylist()
    pool: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in rows:
        if r["split"] == "retain":
            pool.setdefault((r["task"], _question_key(r["question"], r["task"])), []).append(
                (r["entity_id"], r["answer"])
            )
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for r in rows:
        if r["split"] != "forget":
            continue
        cands = [
            a
            for e, a in pool.get((r["task"], _question_key(r["question"], r["task"])), [])
            if e != r["entity_id"]
        ]
        if cands:
            out[r["sample_id"]] = rng.choice(sorted(set(cands)))
    return out


def _question_key(question: str, task: str) -> str:
    # Text-only questions name the entity, so pooling by exact text would find no other entity.
    return task if task in ("text_qa", "mc_text") else question


class RowEncoder:
    """Ray Data callable class: one processor per actor, reused across batches."""

    def __init__(self, processor_dir: str, image_size: int, rand_answers: dict[str, str]) -> None:
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(processor_dir)
        self.image_size = image_size
        self.rand_answers = rand_answers

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["sample_id"])
        out: dict[str, list[Any]] = {k: [] for k in _OUT_COLUMNS}
        for i in range(n):
            row = {k: batch[k][i] for k in batch}
            try:
                enc = self._encode_row(row)
            except Exception as exc:  # noqa: BLE001 - every failure is quarantined with its reason
                enc = quarantine_row(row, f"{type(exc).__name__}: {exc}")
            for k in _OUT_COLUMNS:
                out[k].append(enc.get(k))
        return pa.Table.from_pydict(out, schema=SHARD_SCHEMA)

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
            refusal = REFUSAL_ANSWERS[0]
            idk = encode_example(
                self.processor,
                question=row["question"],
                answer=refusal,
                image=image,
                image_size=self.image_size,
            )
            result["idk_input_ids"], result["idk_labels"] = idk["input_ids"], idk["labels"]
            rand = self.rand_answers.get(row["sample_id"])
            if rand is not None:
                r = encode_example(
                    self.processor,
                    question=row["question"],
                    answer=rand,
                    image=image,
                    image_size=self.image_size,
                )
                result["rand_input_ids"], result["rand_labels"] = r["input_ids"], r["labels"]
        return result


_OUT_COLUMNS = (
    "sample_id", "entity_id", "split", "task", "question", "answer", "options", "private_facts",
    "visible_attributes", "answer_variants", "image_u8", "image_hw", "input_ids", "labels",
    "idk_input_ids", "idk_labels", "rand_input_ids", "rand_labels", "quarantine_reason",
)  # fmt: skip

SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()), ("entity_id", pa.string()), ("split", pa.string()), ("task", pa.string()),
        ("question", pa.string()), ("answer", pa.string()), ("options", pa.list_(pa.string())),
        ("private_facts", pa.string()), ("visible_attributes", pa.string()), ("answer_variants", pa.string()),
        ("image_u8", pa.binary()), ("image_hw", pa.list_(pa.int32())),
        ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
        ("idk_input_ids", pa.list_(pa.int32())), ("idk_labels", pa.list_(pa.int32())),
        ("rand_input_ids", pa.list_(pa.int32())), ("rand_labels", pa.list_(pa.int32())),
        ("quarantine_reason", pa.string()),
    ]
)  # fmt: skip


def quarantine_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    keep = {k: row.get(k) for k in ("sample_id", "entity_id", "split", "task", "question", "answer")}
    return {**keep, "quarantine_reason": reason}
