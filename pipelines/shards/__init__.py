"""Stage 1, data: canonical records -> tokenized Parquet shards (Ray Data), and reading them back."""

from pipelines.shards.build import ShardReport, load_manifest, shard_records
from pipelines.shards.encode import SHARD_SCHEMA
from pipelines.shards.read import (
    EVAL_SPLITS,
    TRAIN_SPLITS,
    load_shard_rows,
    rows_lacking_views,
    rows_with_images,
    stream_dataset,
)

__all__ = [
    "EVAL_SPLITS", "SHARD_SCHEMA", "TRAIN_SPLITS", "ShardReport", "load_manifest", "load_shard_rows",
    "rows_lacking_views", "rows_with_images", "shard_records", "stream_dataset",
]  # fmt: skip
