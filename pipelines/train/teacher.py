"""PUBG's teacher, computed once: batch inference with the frozen original model (Ray Data, or in
the calling process for a small forget set).

For each row of the forget stream the teacher sees the guidance instruction + question + image and
answers greedily (o). We store the student view (plain question + o, ``guide_``), the teacher view
(instruction + question + o, ``teacher_``, for a live teacher) and the teacher's top-k log-probs
over o's tokens. The result is a copy of the forget shards keyed by (model weights, forget shards,
instruction, k, max_new_tokens): a sweep over the other PUBG weights reuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipelines.workspace import say_once
from unlearn_core.config import ModelConfig
from unlearn_core.data.selection import in_stream
from unlearn_core.data.teacher_cache import GUIDE_KEEP, TOPK_IDS, TOPK_K, TOPK_LOGPROBS
from unlearn_core.eval.runner import row_image
from unlearn_core.prompts import guided_question

TEACHER_COLUMNS = [
    ("teacher_answer", pa.string()),
    ("guide_input_ids", pa.list_(pa.int32())),
    ("guide_labels", pa.list_(pa.int32())),
    ("teacher_input_ids", pa.list_(pa.int32())),
    ("teacher_labels", pa.list_(pa.int32())),
    (TOPK_IDS, pa.list_(pa.int32())),
    (TOPK_LOGPROBS, pa.list_(pa.float32())),
    (TOPK_K, pa.int32()),
]


class _Teacher:
    def __init__(self, model_dir: str, instruction: str, k: int, max_new_tokens: int) -> None:
        from unlearn_core.models.loading import load_model_and_processor

        self.model, self.processor = load_model_and_processor(model_dir, ModelConfig(spec=model_dir))
        self.model.eval()
        self.instruction, self.k, self.max_new_tokens = instruction, k, max_new_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        from unlearn_core.data.encode import encode_example
        from unlearn_core.models.generate import generate, teacher_topk

        rows = batch.to_pylist()
        images = [row_image(r) for r in rows]
        guided = [guided_question(r["question"], self.instruction) for r in rows]
        answers = generate(
            self.model,
            self.processor,
            [{"question": q, "image": im} for q, im in zip(guided, images, strict=True)],
            max_new_tokens=self.max_new_tokens,
        )
        guide = [
            encode_example(self.processor, question=r["question"], answer=o, image=im)
            for r, o, im in zip(rows, answers, images, strict=True)
        ]
        teach = [
            encode_example(self.processor, question=q, answer=o, image=im)
            for q, o, im in zip(guided, answers, images, strict=True)
        ]
        topk = teacher_topk(
            self.model,
            self.processor,
            [
                {"input_ids": t["input_ids"], "labels": t["labels"], "image": im}
                for t, im in zip(teach, images, strict=True)
            ],
            self.k,
        )
        extra = {
            "teacher_answer": answers,
            "guide_input_ids": [g["input_ids"] for g in guide],
            "guide_labels": [g["labels"] for g in guide],
            "teacher_input_ids": [t["input_ids"] for t in teach],
            "teacher_labels": [t["labels"] for t in teach],
            TOPK_IDS: [ids.reshape(-1).tolist() for ids, _ in topk],
            TOPK_LOGPROBS: [lps.reshape(-1).tolist() for _, lps in topk],
            TOPK_K: [self.k] * len(rows),
        }
        for name, typ in TEACHER_COLUMNS:
            batch = batch.append_column(pa.field(name, typ), pa.array(extra[name], type=typ))
        return batch


def mark_leaking(result: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Add ``guide_keep`` (False where the teacher's answer names the person or states a private
    fact); return the table with every row and the leaking rows. Leaking rows stay: the forget
    stream's ascent term needs them, only the guidance term skips them."""
    from unlearn_core.eval.text_checks import leaks

    facts = [json.loads(f or "{}") for f in result["private_facts"].to_pylist()]
    bad = [bool(leaks(a, f)) for a, f in zip(result["teacher_answer"].to_pylist(), facts, strict=True)]
    marked = result.append_column(
        pa.field(GUIDE_KEEP, pa.bool_()), pa.array([not b for b in bad], pa.bool_())
    )
    return marked, result.filter(pa.array(bad, type=pa.bool_()))


# Bumped when the cache's layout changes (v2: leaking rows kept and marked, not dropped).
CACHE_VERSION = 2


def cache_key(model_sha: str, shards_fingerprint: str, instruction: str, k: int, max_new_tokens: int) -> str:
    raw = json.dumps([model_sha, shards_fingerprint, instruction, k, max_new_tokens, CACHE_VERSION])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# A forget set this small is annotated in the calling process: an actor pool's start-up (a new process,
# imports, model load) cost more than the work (8-15 s against ~2 s for the demo's 168 rows). Its rows
# are cut as the Ray Data path cuts them (``2 * actors`` blocks, batches of ``TEACHER_BATCH`` within
# each): the demo's cache came out bit-identical both ways.
IN_PROCESS_MAX_ROWS = 1024
TEACHER_BATCH = 32


def _batch_ranges(n_rows: int, blocks: int, batch: int) -> list[tuple[int, int]]:
    """(start, length) of each batch: ``n_rows`` split into ``blocks`` near-equal blocks (the first
    ones one row longer), each block cut into batches of ``batch`` rows."""
    size, extra = divmod(n_rows, blocks)
    out, start = [], 0
    for b in range(blocks):
        length = size + (b < extra)
        out += [(start + i, min(batch, length - i)) for i in range(0, length, batch)]
        start += length
    return out


def build_teacher_cache(
    model_dir: str | Path,
    shards_dir: str | Path,
    out_root: str | Path,
    *,
    instruction: str = "default",
    k: int = 16,
    max_new_tokens: int = 40,
    actors: int = 1,
    log=print,
    compute: bool = True,
) -> Path:
    """The forget-stream shards annotated with the teacher (built once per key); returns its folder.
    ``compute=False``: raise ``NotCached`` instead of building a missing cache."""
    from pipelines.shards import load_manifest
    from pipelines.tracking import weights_sha256

    shards_dir = Path(shards_dir)
    key = cache_key(
        weights_sha256(model_dir), load_manifest(shards_dir)["fingerprint"], instruction, k, max_new_tokens
    )
    out = Path(out_root) / key
    if (out / "teacher.json").exists():
        say_once(log, f"[cached] PUBG teacher answers {out}")
        return out
    if not compute:
        from pipelines.workspace import NotCached

        raise NotCached(f"PUBG teacher answers {out}")
    table = pq.read_table(shards_dir / "forget")
    mask = [
        in_stream("forget", s, t)
        for s, t in zip(table["split"].to_pylist(), table["task"].to_pylist(), strict=True)
    ]
    table = table.filter(pa.array(mask))
    log(f"PUBG teacher: {table.num_rows} forget prompts, instruction={instruction!r}, top-k={k}")
    blocks, args = max(1, actors * 2), (str(model_dir), instruction, k, max_new_tokens)
    if 0 < table.num_rows <= IN_PROCESS_MAX_ROWS:
        teacher = _Teacher(*args)
        result = pa.concat_tables(
            [
                teacher(table.slice(start, n))
                for start, n in _batch_ranges(table.num_rows, blocks, TEACHER_BATCH)
            ]
        )
    else:
        annotated = (
            ray.data.from_arrow(table)
            .repartition(blocks)
            .map_batches(
                _Teacher,
                fn_constructor_args=args,
                batch_size=TEACHER_BATCH,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                num_cpus=1,
            )
        )
        result = pa.concat_tables(list(annotated.iter_batches(batch_size=None, batch_format="pyarrow")))
    if result.num_rows != table.num_rows:
        raise RuntimeError(f"teacher annotated {result.num_rows} of {table.num_rows} rows")
    result, leaking = mark_leaking(result)
    note = ""
    if leaking.num_rows:
        note = (
            " (the teacher did not follow the instruction there: kept for the ascent term, left out of the"
            " guidance term, listed in teacher.json)"
        )
    log(f"PUBG teacher answers: {table.num_rows} rows, {leaking.num_rows} of them leak{note}")
    staging = out.with_suffix(".staging")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "forget").mkdir(parents=True)
    pq.write_table(result.sort_by("sample_id"), staging / "forget" / "part-00000.parquet", compression="zstd")
    examples = result.select(["sample_id", "question", "teacher_answer"]).slice(0, 5).to_pylist()
    meta = {
        "key": key,
        "instruction": instruction,
        "k": k,
        "rows": result.num_rows,
        "examples": examples,
        "guidance_skipped_leaking": leaking.select(["sample_id", "teacher_answer"]).to_pylist(),
    }
    (staging / "teacher.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
