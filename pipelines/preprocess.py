"""`unlearn data shard`: canonical records -> tokenized Parquet shards with Ray Data.

Per row: validate, decode + resize the image to uint8, apply the model's processor and chat
template with answer-only labels. Forget rows also get the views the baselines need
(``idk_``: a refusal answer for `reject`, ``rand_``: another entity's answer for `random`).
Output: ``OUT/<split>/part-*.parquet``, ``OUT/processor/`` and ``OUT/manifest.json``. The manifest
fingerprints records + processor + config; an identical fingerprint skips the work.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.datasource import FilenameProvider

from pipelines import console
from unlearn_core.config import ModelConfig
from unlearn_core.data.encode import encode_example, prepare_image
from unlearn_core.data.records_io import read_records
from unlearn_core.data.schema import SPLITS, RecordError
from unlearn_core.models.loading import load_model_and_processor
from unlearn_core.prompts import REFUSAL_ANSWERS

SHARD_FORMAT_VERSION = 1
VIEW_PREFIXES = ("idk_", "rand_")


@dataclass
class ShardReport:
    out_dir: str
    fingerprint: str
    skipped: bool
    read: int = 0
    written: int = 0
    quarantined: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    rows_per_task: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        head = "cached (fingerprint unchanged)" if self.skipped else "built"
        lines = [f"shards {head}: {self.out_dir}  fingerprint={self.fingerprint[:16]}"]
        lines.append(f"read = written + quarantined: {self.read} = {self.written} + {self.quarantined}")
        for split, n in sorted(self.rows_per_split.items()):
            tasks = ", ".join(f"{t}={c}" for t, c in sorted(self.rows_per_task.get(split, {}).items()))
            lines.append(f"  {split:<14} {n:>6}  ({tasks})")
        return "\n".join(lines)


class _StableNames(FilenameProvider):
    """Deterministic shard names so identical inputs give identical output folders."""

    def __init__(self) -> None:
        super().__init__(file_format="parquet")

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:05d}.parquet"


def _hash_files(h: Any, folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())


def fingerprint(records_dir: Path, processor_dir: Path, shard_cfg: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(f"v{SHARD_FORMAT_VERSION}".encode())
    for p in sorted(records_dir.glob("*.parquet")):
        if p.name == "quarantine.parquet":
            continue
        h.update(p.name.encode())
        h.update(p.read_bytes())
    _hash_files(h, processor_dir)
    h.update(json.dumps(shard_cfg, sort_keys=True).encode())
    return h.hexdigest()


def _random_answers(table: pa.Table, seed: int) -> dict[str, str]:
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
        cands = [a for e, a in pool.get((r["task"], _question_key(r["question"], r["task"])), []) if e != r["entity_id"]]
        if cands:
            out[r["sample_id"]] = rng.choice(sorted(set(cands)))
    return out


def _question_key(question: str, task: str) -> str:
    # Text-only questions name the entity, so pooling by exact text would find no other entity.
    return task if task in ("text_qa", "mc_text") else question


class _Encoder:
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
                enc = _quarantine_row(row, f"{type(exc).__name__}: {exc}")
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
            self.processor, question=row["question"], answer=row["answer"], image=image, image_size=self.image_size
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
            "image_u8": image.tobytes() if image is not None else None,
            "image_hw": [h, w] if image is not None else None,
            "input_ids": enc["input_ids"],
            "labels": enc["labels"],
            "quarantine_reason": None,
        }
        if row["split"] == "forget":
            refusal = REFUSAL_ANSWERS[0]
            idk = encode_example(
                self.processor, question=row["question"], answer=refusal, image=image, image_size=self.image_size
            )
            result["idk_input_ids"], result["idk_labels"] = idk["input_ids"], idk["labels"]
            rand = self.rand_answers.get(row["sample_id"])
            if rand is not None:
                r = encode_example(
                    self.processor, question=row["question"], answer=rand, image=image, image_size=self.image_size
                )
                result["rand_input_ids"], result["rand_labels"] = r["input_ids"], r["labels"]
        return result


_OUT_COLUMNS = (
    "sample_id", "entity_id", "split", "task", "question", "answer", "options", "private_facts",
    "visible_attributes", "image_u8", "image_hw", "input_ids", "labels",
    "idk_input_ids", "idk_labels", "rand_input_ids", "rand_labels", "quarantine_reason",
)  # fmt: skip

SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()), ("entity_id", pa.string()), ("split", pa.string()), ("task", pa.string()),
        ("question", pa.string()), ("answer", pa.string()), ("options", pa.list_(pa.string())),
        ("private_facts", pa.string()), ("visible_attributes", pa.string()),
        ("image_u8", pa.binary()), ("image_hw", pa.list_(pa.int32())),
        ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
        ("idk_input_ids", pa.list_(pa.int32())), ("idk_labels", pa.list_(pa.int32())),
        ("rand_input_ids", pa.list_(pa.int32())), ("rand_labels", pa.list_(pa.int32())),
        ("quarantine_reason", pa.string()),
    ]
)  # fmt: skip


def _quarantine_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    keep = {k: row.get(k) for k in ("sample_id", "entity_id", "split", "task", "question", "answer")}
    return {**keep, "quarantine_reason": reason}


def build_processor(model_spec: str, records: pa.Table, out_dir: Path, model_cfg: ModelConfig, image_size: int) -> None:
    """Save the processor the shards are encoded with (a tiny-llava one is trained on the records' text)."""
    corpus = None
    if model_spec == "tiny-llava":
        corpus = _corpus(records)
    _model, processor = load_model_and_processor(
        model_spec, model_cfg, corpus_texts=corpus, image_size=image_size, processor_only=True
    )
    processor.save_pretrained(str(out_dir))


def _corpus(records: pa.Table) -> list[str]:
    texts = records.column("question").to_pylist() + records.column("answer").to_pylist()
    for opts in records.column("options").to_pylist():
        texts.extend(opts or [])
    texts.extend(REFUSAL_ANSWERS)
    from unlearn_core.prompts import GUIDANCE_TEMPLATES

    texts.extend(GUIDANCE_TEMPLATES.values())
    return texts


def shard_records(
    records_dir: str | Path,
    out_dir: str | Path,
    *,
    model_spec: str = "tiny-llava",
    model_cfg: ModelConfig | None = None,
    image_size: int = 64,
    seed: int = 0,
    force: bool = False,
    num_cpus_per_actor: float = 1.0,
    actors: int = 2,
) -> ShardReport:
    """Build (or reuse) tokenized shards for every split found in ``records_dir``."""
    records_dir, out_dir = Path(records_dir), Path(out_dir)
    model_cfg = model_cfg or ModelConfig(spec=model_spec)
    table = read_records(records_dir)
    staging = out_dir.parent / (out_dir.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    proc_dir = staging / "processor"
    build_processor(model_spec, table, proc_dir, model_cfg, image_size)
    shard_cfg = {"model_spec": model_spec, "image_size": image_size, "seed": seed, "views": list(VIEW_PREFIXES)}
    fp = fingerprint(records_dir, proc_dir, shard_cfg)

    manifest_path = out_dir / "manifest.json"
    if not force and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fp:
            shutil.rmtree(staging)
            return _report_from_manifest(out_dir, old, skipped=True)

    rand_answers = _random_answers(table, seed)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_arrow(table).repartition(max(1, min(16, table.num_rows // 256 or 1)))
    encoded = ds.map_batches(
        _Encoder,
        fn_constructor_args=(str(proc_dir), image_size, rand_answers),
        batch_size=128,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=num_cpus_per_actor,
        batch_format="numpy",
    )
    parts = []
    with console.progress("sharding", table.num_rows, "records", marks=(0.5,)) as bar:
        for part in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
            parts.append(part)
            if bar is not None:
                bar.advance(part.num_rows)
    result = pa.concat_tables(parts)
    report = _write(result, staging, table.num_rows)
    manifest = {
        "format_version": SHARD_FORMAT_VERSION,
        "fingerprint": fp,
        "records_dir": str(records_dir.resolve()),
        "model_spec": model_spec,
        "config": shard_cfg,
        "read": report.read,
        "written": report.written,
        "quarantined": report.quarantined,
        "rows_per_split": report.rows_per_split,
        "rows_per_task": report.rows_per_task,
        "schema": {f.name: str(f.type) for f in SHARD_SCHEMA if f.name != "quarantine_reason"},
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    report.out_dir, report.fingerprint = str(out_dir), fp
    return report


def _write(result: pa.Table, out_dir: Path, n_read: int) -> ShardReport:
    reasons = result.column("quarantine_reason")
    bad_mask = pa.compute.is_valid(reasons)
    good = result.filter(pa.compute.invert(bad_mask)).drop_columns(["quarantine_reason"])
    bad = result.filter(bad_mask).select(["sample_id", "split", "task", "quarantine_reason"])
    if good.num_rows + bad.num_rows != n_read:
        raise RecordError(f"row count mismatch: read {n_read}, written {good.num_rows}, quarantined {bad.num_rows}")
    rows_per_split: dict[str, int] = {}
    rows_per_task: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        part = good.filter(pa.compute.equal(good.column("split"), split))
        if part.num_rows == 0:
            continue
        part = part.sort_by("sample_id")
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(part, out_dir / split / "part-00000.parquet", compression="zstd", row_group_size=4096)
        rows_per_split[split] = part.num_rows
        rows_per_task[split] = dict(sorted(Counter(part.column("task").to_pylist()).items()))
    if bad.num_rows:
        pq.write_table(bad, out_dir / "quarantine.parquet")
    return ShardReport(
        out_dir=str(out_dir),
        fingerprint="",
        skipped=False,
        read=n_read,
        written=good.num_rows,
        quarantined=bad.num_rows,
        rows_per_split=rows_per_split,
        rows_per_task=rows_per_task,
    )


def _report_from_manifest(out_dir: Path, m: dict[str, Any], *, skipped: bool) -> ShardReport:
    return ShardReport(
        out_dir=str(out_dir),
        fingerprint=m["fingerprint"],
        skipped=skipped,
        read=m["read"],
        written=m["written"],
        quarantined=m["quarantined"],
        rows_per_split=m["rows_per_split"],
        rows_per_task=m["rows_per_task"],
    )


def load_manifest(shards_dir: str | Path) -> dict[str, Any]:
    p = Path(shards_dir) / "manifest.json"
    if not p.is_file():
        raise RecordError(f"{shards_dir}: no manifest.json; build shards with `unlearn data shard` first")
    return json.loads(p.read_text())
