"""`unlearn eval`: batch generation as Ray Data ``map_batches`` over an actor pool, metrics on the driver."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from pipelines import console
from pipelines.shards import EVAL_SPLITS, SHARD_SCHEMA, load_shard_rows
from unlearn_core.config import ModelConfig
from unlearn_core.data.shard_image import decode_image_u8
from unlearn_core.eval.judge import JudgeConfig
from unlearn_core.eval.protocols import Protocol, get_protocol, resolve_protocol
from unlearn_core.eval.protocols import zero_shot as zero_shot_protocol
from unlearn_core.eval.runner import EVAL_CHUNK, model_outputs, select_eval_rows


class _Generator:
    """One model per actor; each batch of rows -> their outputs as JSON strings. ``few_shot``: the
    MLLMU-Bench few-shot examples by key (rows carry only the key, ``few_shot_key``)."""

    def __init__(
        self, model_dir: str, protocol: str = "synthetic", few_shot: dict[str, Any] | None = None
    ) -> None:
        from unlearn_core.models.loading import load_model_and_processor

        self.model, self.processor = load_model_and_processor(model_dir, ModelConfig(spec=model_dir))
        self.model.eval()
        self.protocol = get_protocol(protocol)
        self.few_shot = few_shot or {}

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        rows = [
            {**r, "few_shot": self.few_shot[r["few_shot_key"]]} if r.get("few_shot_key") else r
            for r in batch.to_pylist()
        ]
        outs = model_outputs(self.model, self.processor, rows, protocol=self.protocol)
        return {
            "sample_id": [r["sample_id"] for r in rows],
            "output": [json.dumps(outs[r["sample_id"]]) for r in rows],
        }


def generate_outputs(
    model_dir: str | Path, rows: list[dict[str, Any]], *, actors: int = 1, protocol: str = "synthetic"
) -> dict[str, dict]:
    """Ray Data batch inference over ``rows``; returns sample_id -> output."""
    columns = ["sample_id", "split", "task", "question", "options", "answer_variants", "image_u8", "image_hw"]
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns] + [pa.field("few_shot_key", pa.string())])
    few_shot = {r["few_shot"].key: r["few_shot"] for r in rows if r.get("few_shot") is not None}
    table = pa.Table.from_pylist(
        [
            {
                **{k: r.get(k) for k in columns},
                "few_shot_key": r["few_shot"].key if r.get("few_shot") else None,
            }
            for r in rows
        ],
        schema=schema,
    )
    ds = ray.data.from_arrow(table).repartition(max(1, actors))
    out = ds.map_batches(
        _Generator,
        fn_constructor_args=(str(model_dir), protocol, few_shot),
        batch_size=EVAL_CHUNK,
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
    pixels = decode_image_u8(row.get("image_u8"), row.get("image_hw"), where=f"row {row.get('sample_id')}")
    if pixels is None:
        return None
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def judge_shard_outputs(
    rows: list[dict[str, Any]], outputs: dict[str, Any], cfg: JudgeConfig
) -> dict[str, float]:
    """The optional LLM judge over shard rows: their raw pixels go to the judge as PNG images."""
    from unlearn_core.eval.judge import judge_answers

    judged = [
        {**r, "image": shard_image_png(r)}
        for r in rows
        if r.get("split") in cfg.splits and r.get("task") in cfg.tasks
    ]
    return judge_answers(judged, outputs, cfg)


def clip_score_shard_outputs(
    rows: list[dict[str, Any]], outputs: dict[str, Any], clip_model: str, report: dict[str, Any]
) -> None:
    """``--clip-model``: ``quality.clipscore`` / ``quality.clip_s`` of the open answers against their
    shard images (raw uint8 pixels), into ``report``'s metrics, counts and per-sample rows."""
    from pipelines.shards import rows_with_images
    from unlearn_core.eval.clipscore import CLIP_SPLITS, ClipScorer, clip_scores

    scored = rows_with_images([r for r in rows if r.get("split") in CLIP_SPLITS])
    metrics, counts, per_sample = clip_scores(scored, outputs, ClipScorer.load(clip_model))
    report["metrics"] = dict(sorted({**report["metrics"], **metrics}.items()))
    report["counts"] = dict(sorted({**report["counts"], **counts}.items()))
    for row in report["per_sample"]:
        row.update(per_sample.get(str(row["sample_id"]), {}))


def evaluate(
    model_dir: str | Path,
    shards_dir: str | Path,
    *,
    max_per_group: int = 64,
    seed: int = 0,
    actors: int = 1,
    judge: JudgeConfig | None = None,
    protocol: str | None = None,
    reference_report: str | Path | None = None,
    clip_model: str | None = None,
    zero_shot: bool = False,
) -> dict[str, Any]:
    """Metrics + per-sample details for a saved model on the evaluation splits of ``shards_dir``;
    with ``judge``, also the ``judge.*`` rubric scores of an OpenAI-compatible endpoint (``report["judge"]``
    says whether it scored; a failing judge keeps every other metric and leaves ``judge.*`` missing);
    with ``clip_model`` (a CLIP checkpoint), the answers' ``quality.clipscore`` and ``quality.clip_s``.
    ``protocol`` (default: the one the rows' benchmark implies) fixes prompts, decoding and metrics.
    ``reference_report`` (CLEAR): the eval / score JSON of the retain-only model, whose forget rows'
    truth-ratio losses give ``clear.forget_quality``. ``zero_shot``: MLLMU-Bench without its few-shot
    prefixes (the protocol ``mllmu-bench-zero-shot``)."""
    from unlearn_core.eval.score import report_truth_losses

    rows, proto = evaluation_rows(shards_dir, max_per_group, seed, protocol, zero_shot=zero_shot)
    reference = report_truth_losses(reference_report) if reference_report is not None else None
    outputs = generate_outputs(model_dir, rows, actors=actors, protocol=proto.name)
    report = build_report(
        rows, outputs, proto, reference=reference, reference_name=str(reference_report), few_shot_seed=seed
    )
    if judge is not None:
        from unlearn_core.eval.judge import JudgeError

        try:
            report["metrics"].update(judge_shard_outputs(rows, outputs, judge))
            report["judge"] = {"status": "scored", "url": judge.base_url, "model": judge.model}
        except JudgeError as err:  # the metrics computed so far stay; the judge.* scores are missing
            report["judge"] = {
                "status": "failed",
                "url": judge.base_url,
                "model": judge.model,
                "error": str(err),
            }
    if clip_model is not None:
        clip_score_shard_outputs(rows, outputs, clip_model, report)
    return report


def evaluation_rows(
    shards_dir: str | Path,
    max_per_group: int,
    seed: int = 0,
    protocol: str | None = None,
    *,
    all_rows: list[dict[str, Any]] | None = None,
    zero_shot: bool = False,
) -> tuple[list[dict[str, Any]], Protocol]:
    """The rows a final evaluation of ``shards_dir`` scores, in order, and their protocol
    (``all_rows``: the shard rows, when the caller has already read them; ``zero_shot``: the
    protocol without few-shot prefixes). Under ``mllmu-bench`` the rows carry their few-shot examples
    and the examples' people's own questions are left out (``select_eval_rows``)."""
    all_rows = load_shard_rows(shards_dir) if all_rows is None else all_rows
    proto = resolve_protocol(all_rows, protocol)
    if zero_shot:
        proto = zero_shot_protocol(proto)
    rows = select_eval_rows(
        all_rows, max_per_group, seed, every_task=proto.is_benchmark, few_shot=proto.few_shot
    )
    if not rows:
        raise ValueError(f"{shards_dir}: no evaluation rows (splits {EVAL_SPLITS})")
    return rows, proto


def build_report(
    rows: list[dict[str, Any]],
    outputs: dict[str, Any],
    proto: Protocol,
    *,
    reference: Any = None,
    reference_name: str = "",
    few_shot_seed: int = 0,
) -> dict[str, Any]:
    """The evaluation report (metrics, counts, per-sample rows with their generations) of ``outputs``,
    wherever they were generated (Ray Data actors here, or the training workers at the last step)."""
    from unlearn_core.eval.score import add_forget_quality, score_outputs

    result = score_outputs(rows, outputs, proto)
    if reference is not None:
        add_forget_quality(result, reference, f"this evaluation and {reference_name}")
    per_sample = [
        {**r, "generation": outputs[r["sample_id"]]["generation"]}
        if "generation" in outputs.get(r["sample_id"], {})
        else r
        for r in result["per_sample"]
    ]
    report = {
        "protocol": proto.name,
        "metrics": dict(result["metrics"]),
        "counts": result["counts"],
        "per_sample": per_sample,
        "n_rows": len(rows),
    }
    plans = {r["few_shot"].key: r["few_shot"] for r in rows if r.get("few_shot") is not None}
    if plans:  # MLLMU-Bench few-shot: what was drawn, stated
        report["few_shot"] = {
            "seed": few_shot_seed,
            "skipped_rows": sum(len(p.skipped) for p in plans.values()),
            "plans": {k: plans[k].statement() for k in sorted(plans)},
        }
    return report
