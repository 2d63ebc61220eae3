"""`unlearn data shard`: canonical records -> tokenized Parquet shards with Ray Data.

Per row: validate, decode + resize the image to uint8, apply the model's processor and chat
template with answer-only labels. Forget rows also get the views the registered methods declare
(``shard_views``: ``idk_``, a refusal answer for `reject`; ``rand_``, another entity's answer for `random`).
Output: ``OUT/<split>/part-*.parquet``, ``OUT/processor/`` and ``OUT/manifest.json``. The manifest
fingerprints records + processor + config; an identical fingerprint skips the work.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipelines import console
from pipelines.preflight import SHARD_FORMAT_VERSION, SHARDS_WRITER, legacy_shards
from pipelines.shards.encode import RowEncoder, shard_schema, view_answers
from unlearn_core.config import ModelConfig
from unlearn_core.data.records_io import read_records
from unlearn_core.data.schema import SPLITS, RecordError
from unlearn_core.models.loading import load_model_and_processor
from unlearn_core.outputs import OutputError, check_folder, discard, new_stage, publish_folder
from unlearn_core.prompts import REFUSAL_ANSWERS


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


def build_processor(
    model_spec: str, records: pa.Table, out_dir: Path, model_cfg: ModelConfig, image_size: int
) -> None:
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
    for variants in records.column("answer_variants").to_pylist():  # CLEAR's truth-ratio captions
        texts.extend(_variant_texts(variants))
    texts.extend(REFUSAL_ANSWERS)
    from unlearn_core.prompts import GUIDANCE_TEMPLATES

    texts.extend(GUIDANCE_TEMPLATES.values())
    return texts


def _variant_texts(variants: str | None) -> list[str]:
    """The strings of a record's ``answer_variants`` JSON (validated by `unlearn data convert`)."""
    if not variants:
        return []

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            value = list(value.values())
        return [s for v in value for s in strings(v)] if isinstance(value, list) else []

    return strings(json.loads(variants))


def shard_records(
    records_dir: str | Path,
    out_dir: str | Path,
    *,
    model_spec: str = "tiny-llava",
    model_cfg: ModelConfig | None = None,
    image_size: int = 64,
    seed: int = 0,
    force: bool = False,
    replace: bool = True,
    num_cpus_per_actor: float = 1.0,
    actors: int = 2,
    before_ray: Callable[[], None] | None = None,
) -> ShardReport:
    """Build (or reuse) tokenized shards for every split found in ``records_dir``.

    ``out_dir`` is a new (or empty) folder, or shards written here before: reused when the fingerprint
    is unchanged, rebuilt when it changed and ``replace`` (the workdir's cache; `unlearn data shard`
    asks for ``--force``). Anything else there is refused (``OutputError``, nothing touched).
    ``force``: rebuild even when unchanged, and replace any earlier output of the project.
    ``before_ray``: called once the processor is built and the work needs Ray (the CLI starts it there).
    """
    records_dir = Path(records_dir)
    dest = check_folder(out_dir, "--out", force=force, reuse=SHARDS_WRITER, recognise=legacy_shards)
    model_cfg = model_cfg or ModelConfig(spec=model_spec)
    table = read_records(records_dir)
    staging = new_stage(dest)
    try:
        return _build(
            records_dir,
            dest,
            staging,
            table,
            model_spec=model_spec,
            model_cfg=model_cfg,
            shard_cfg={"model_spec": model_spec, "image_size": image_size, "seed": seed},
            force=force,
            replace=replace,
            num_cpus_per_actor=num_cpus_per_actor,
            actors=actors,
            before_ray=before_ray,
        )
    finally:
        discard(staging)  # gone already when published


def _build(
    records_dir: Path,
    dest: Path,
    staging: Path,
    table: pa.Table,
    *,
    model_spec: str,
    model_cfg: ModelConfig,
    shard_cfg: dict[str, Any],
    force: bool,
    replace: bool,
    num_cpus_per_actor: float,
    actors: int,
    before_ray: Callable[[], None] | None,
) -> ShardReport:
    proc_dir = staging / "processor"
    image_size = shard_cfg["image_size"]
    build_processor(model_spec, table, proc_dir, model_cfg, image_size)
    answers = view_answers(table, shard_cfg["seed"])  # the methods' extra views of the forget rows
    shard_cfg = {**shard_cfg, "views": list(answers)}
    fp = fingerprint(records_dir, proc_dir, shard_cfg)

    manifest_path = dest / "manifest.json"
    if manifest_path.exists():  # an earlier output of this function (check_folder made sure)
        old = json.loads(manifest_path.read_text())
        if not force and old.get("fingerprint") == fp:
            return _report_from_manifest(dest, old, skipped=True)
        if not (force or replace):
            raise OutputError(
                f"--out {dest}: holds shards built from other records or options (the fingerprint "
                "changed); nothing was changed. Pass --force to rebuild them, or choose a new folder"
            )
    if before_ray is not None:
        before_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_arrow(table).repartition(max(1, min(16, table.num_rows // 256 or 1)))
    encoded = ds.map_batches(
        RowEncoder,
        fn_constructor_args=(str(proc_dir), image_size, answers),
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
        "schema": {
            f.name: str(f.type) for f in shard_schema(tuple(answers)) if f.name != "quarantine_reason"
        },
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    publish_folder(staging, dest, SHARDS_WRITER, force=True, recognise=legacy_shards)
    report.out_dir, report.fingerprint = str(dest), fp
    return report


def _write(result: pa.Table, out_dir: Path, n_read: int) -> ShardReport:
    reasons = result.column("quarantine_reason")
    bad_mask = pa.compute.is_valid(reasons)
    good = result.filter(pa.compute.invert(bad_mask)).drop_columns(["quarantine_reason"])
    bad = result.filter(bad_mask).select(["sample_id", "split", "task", "quarantine_reason"])
    if good.num_rows + bad.num_rows != n_read:
        raise RecordError(
            f"row count mismatch: read {n_read}, written {good.num_rows}, quarantined {bad.num_rows}"
        )
    if good.num_rows == 0:
        first = bad.slice(0, 1).to_pylist()
        example = f" (first: {first[0]['sample_id']}: {first[0]['quarantine_reason']})" if first else ""
        raise RecordError(
            f"no record could be encoded: all {n_read} quarantined{example}; nothing was written"
        )
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
