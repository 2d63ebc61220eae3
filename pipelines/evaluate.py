"""`unlearn eval`: batch generation as Ray Data ``map_batches`` over an actor pool, metrics on the driver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipelines import console
from pipelines.preprocess import SHARD_SCHEMA
from unlearn_core.config import ModelConfig
from unlearn_core.eval.judge import JudgeConfig
from unlearn_core.eval.runner import model_outputs, select_eval_rows

EVAL_SPLITS = ("forget", "forget_unseen", "retain", "retain_unseen", "utility")


def load_shard_rows(shards_dir: str | Path, splits: tuple[str, ...] = EVAL_SPLITS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for split in splits:
        folder = Path(shards_dir) / split
        if folder.is_dir():
            rows.extend(pq.read_table(folder).to_pylist())
    return rows


class _Generator:
    """One model per actor; each batch of rows -> their outputs as JSON strings."""

    def __init__(self, model_dir: str) -> None:
        from unlearn_core.models.loading import load_model_and_processor

        self.model, self.processor = load_model_and_processor(model_dir, ModelConfig(spec=model_dir))
        self.model.eval()

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        rows = batch.to_pylist()
        outs = model_outputs(self.model, self.processor, rows)
        return {"sample_id": [r["sample_id"] for r in rows], "output": [json.dumps(outs[r["sample_id"]]) for r in rows]}


def generate_outputs(model_dir: str | Path, rows: list[dict[str, Any]], *, actors: int = 1) -> dict[str, dict]:
    """Ray Data batch inference over ``rows``; returns sample_id -> output."""
    columns = ["sample_id", "split", "task", "question", "options", "image_u8", "image_hw"]
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns])
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows], schema=schema)
    ds = ray.data.from_arrow(table).repartition(max(1, actors))
    out = ds.map_batches(
        _Generator,
        fn_constructor_args=(str(model_dir),),
        batch_size=64,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=1,
        batch_format="pyarrow",
    )
    result: dict[str, dict] = {}
    with console.progress("evaluating", len(rows), "rows", marks=(0.5,)) as bar:
        for row in out.iter_rows():
            result[row["sample_id"]] = json.loads(row["output"])
            if bar is not None:
                bar.advance()
    return result


def shard_image_png(row: dict[str, Any]) -> bytes | None:
    """The PNG bytes of a shard row's raw ``image_u8`` (H*W*3 uint8) pixels, or None for text rows."""
    raw, hw = row.get("image_u8"), row.get("image_hw")
    if not raw or not hw:
        return None
    import io

    import numpy as np
    from PIL import Image

    h, w = int(hw[0]), int(hw[1])
    pixels = np.frombuffer(raw, dtype=np.uint8)
    if pixels.size != h * w * 3:
        raise ValueError(f"row {row.get('sample_id')}: image_u8 has {pixels.size} bytes, image_hw {hw} needs {h * w * 3}")
    buf = io.BytesIO()
    Image.fromarray(pixels.reshape(h, w, 3)).save(buf, format="PNG")
    return buf.getvalue()


def judge_shard_outputs(rows: list[dict[str, Any]], outputs: dict[str, Any], cfg: JudgeConfig) -> dict[str, float]:
    """The optional LLM judge over shard rows: their raw pixels go to the judge as PNG images."""
    from unlearn_core.eval.judge import judge_answers

    judged = [{**r, "image": shard_image_png(r)} for r in rows
              if r.get("split") in cfg.splits and r.get("task") in cfg.tasks]
    return judge_answers(judged, outputs, cfg)


def evaluate(
    model_dir: str | Path,
    shards_dir: str | Path,
    *,
    max_per_group: int = 64,
    seed: int = 0,
    actors: int = 1,
    judge: JudgeConfig | None = None,
) -> dict[str, Any]:
    """Metrics + per-sample details for a saved model on the evaluation splits of ``shards_dir``;
    with ``judge``, also the ``judge.*`` rubric scores of an OpenAI-compatible endpoint."""
    from unlearn_core.eval.metrics import evaluate_outputs

    rows = select_eval_rows(load_shard_rows(shards_dir), max_per_group, seed)
    if not rows:
        raise ValueError(f"{shards_dir}: no evaluation rows (splits {EVAL_SPLITS})")
    outputs = generate_outputs(model_dir, rows, actors=actors)
    result = evaluate_outputs(rows, outputs)
    metrics = dict(result.metrics)
    if judge is not None:
        metrics.update(judge_shard_outputs(rows, outputs, judge))
    return {"metrics": metrics, "per_sample": result.per_sample, "n_rows": len(rows)}
