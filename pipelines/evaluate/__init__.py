"""Stage 3, evaluation: Ray Data batch generation over the evaluation splits, metrics on the driver."""

from pipelines.evaluate.batch_eval import (
    build_report,
    clip_score_shard_outputs,
    evaluate,
    evaluation_rows,
    generate_outputs,
    judge_shard_outputs,
    shard_image_png,
)
from pipelines.evaluate.cached import evaluate_cached, remember_evaluation
from pipelines.shards import EVAL_SPLITS, load_shard_rows

__all__ = [
    "EVAL_SPLITS", "build_report", "clip_score_shard_outputs", "evaluate", "evaluation_rows", "evaluate_cached", "generate_outputs", "judge_shard_outputs", "load_shard_rows",
    "remember_evaluation",
    "shard_image_png",
]  # fmt: skip
