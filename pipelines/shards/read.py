"""Reading shards back: evaluation rows, training streams as Ray Datasets, decoded images."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from unlearn_core.data.selection import STREAM_SPLITS, in_stream
from unlearn_core.data.shard_image import decode_image_u8

log = logging.getLogger(__name__)

EVAL_SPLITS = ("forget", "forget_unseen", "retain", "retain_unseen", "utility")


def rows_with_images(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shard rows -> rows whose ``image`` is the decoded uint8 [H, W, 3] array (a zero-copy view)."""
    out = []
    for row in rows:
        row = dict(row)
        raw, hw = row.pop("image_u8", None), row.pop("image_hw", None)
        row["image"] = decode_image_u8(raw, hw, where=f"row {row.get('sample_id')}")
        out.append(row)
    return out


def load_shard_rows(shards_dir: str | Path, splits: tuple[str, ...] = EVAL_SPLITS) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for split in splits:
        folder = Path(shards_dir) / split
        if folder.is_dir():
            rows.extend(pq.read_table(folder).to_pylist())
    return rows


TRAIN_SPLITS = STREAM_SPLITS["train"]  # the vanilla fine-tune's


# Streams whose shard files total less than this are read once into the object store before training:
# a forget set is a few hundred rows (a handful of batches per epoch), and re-reading and re-filtering
# the Parquet files at every epoch cost GA 4x its step time (bench/train_step.py).
MATERIALIZE_MAX_BYTES = int(os.environ.get("UNLEARN_MATERIALIZE_MAX_BYTES", 1 << 30))


def _stream_paths(shards: Path, stream: str, forget_dir: Path | None) -> list[str]:
    if stream not in STREAM_SPLITS:
        raise ValueError(f"unknown stream {stream!r}; valid: {', '.join(STREAM_SPLITS)}")
    splits = STREAM_SPLITS[stream]
    if stream == "forget" and forget_dir is not None:
        paths = [str(forget_dir / "forget")]
    else:
        paths = [str(shards / s) for s in splits if (shards / s).is_dir()]
    if not paths:
        raise FileNotFoundError(f"{shards}: none of the splits {splits} has shards")
    return paths


def _has_views(batch: pa.Table, views: tuple[str, ...]) -> list[bool]:
    """Per row: every view of ``views`` the table carries is encoded (``{prefix}input_ids`` not null)."""
    ok = [True] * batch.num_rows
    for prefix in views:
        column = f"{prefix}input_ids"
        if prefix and column in batch.column_names:
            ok = [a and b for a, b in zip(ok, batch[column].is_valid().to_pylist(), strict=True)]
    return ok


def rows_lacking_views(
    shards: Path, stream: str, views: tuple[str, ...], *, forget_dir: Path | None = None
) -> tuple[int, list[str]]:
    """``(rows of stream, sample ids of those lacking one of views)``: e.g. a forget row for which
    ``random`` found no other person's answer has no ``rand_`` view, and ``stream_dataset(...,
    views=...)`` leaves it out."""
    total, lacking = 0, []
    for path in _stream_paths(shards, stream, forget_dir):
        columns = ["sample_id", "split", "task"]
        names = pq.read_schema(next(Path(path).rglob("*.parquet"))).names
        columns += [f"{p}input_ids" for p in views if p and f"{p}input_ids" in names]
        table = pq.read_table(path, columns=columns)
        pairs = zip(table["split"].to_pylist(), table["task"].to_pylist(), strict=True)
        mine = [i for i, (s, t) in enumerate(pairs) if in_stream(stream, s, t)]
        table = table.take(pa.array(mine, type=pa.int64()))
        total += table.num_rows
        ids = table["sample_id"].to_pylist()
        lacking += [sid for sid, ok in zip(ids, _has_views(table, views), strict=True) if not ok]
    return total, lacking


def stream_dataset(
    shards: Path,
    stream: str,
    *,
    forget_dir: Path | None = None,
    task_weights: dict[str, int] | None = None,
    views: tuple[str, ...] = (),
) -> ray.data.Dataset:
    """The rows of one training stream (see unlearn_core.data.selection) as a Ray Dataset.

    ``forget_dir`` replaces the forget split for the forget stream (PUBG: the teacher-annotated copy).
    ``views``: the batch views the method reads; rows without one of them (``rows_lacking_views``)
    are left out. Small streams (shard files under ``MATERIALIZE_MAX_BYTES``) are read here into the
    object store as one block; large ones stream (Ray Data reads them as the workers iterate).
    """
    paths = _stream_paths(shards, stream, forget_dir)
    weights = task_weights or {}

    def keep(batch: pa.Table) -> pa.Table:
        """Rows of this stream that carry its views, each repeated by its task weight (default 1)."""
        rows = zip(
            batch["split"].to_pylist(), batch["task"].to_pylist(), _has_views(batch, views), strict=True
        )
        idx = [
            i
            for i, (s, t, ok) in enumerate(rows)
            if ok and in_stream(stream, s, t)
            for _ in range(weights.get(t, 1))
        ]
        return batch.take(pa.array(idx, type=pa.int64()))

    # Same seed, same rows in the same order: without it Ray Data yields blocks as they finish, and
    # a fine-tune on shards that already existed could differ from one on freshly built shards. (Also
    # for a stream read here: Ray Train's split of it for the workers runs under this context.)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    files = [f for path in paths for f in sorted(Path(path).rglob("*.parquet"))]
    if sum(f.stat().st_size for f in files) < MATERIALIZE_MAX_BYTES:
        # Read here into one block, the files in order (what a materialized read_parquet of small
        # shards holds: the same block gives the same shuffled batches): no Ray Data job to start,
        # which cost every training job ~6 s per stream on a small machine.
        key = (stream, tuple(sorted(weights.items())), views, tuple(_file_id(f) for f in files))
        if key in _READ:
            return _READ[key]
        ds = _from_arrow_here(pa.concat_tables([keep(pq.read_table(f)) for f in files]))
        in_actor = ray.get_runtime_context().get_actor_id() is not None  # dies with its Ray; a driver may not
        if in_actor:
            while len(_READ) >= READ_CACHE_STREAMS:
                _READ.pop(next(iter(_READ)))
            _READ[key] = ds
        return ds
    return ray.data.read_parquet(paths).map_batches(keep, batch_format="pyarrow")


def _from_arrow_here(table: pa.Table) -> ray.data.Dataset:
    """``ray.data.from_arrow(table)`` without the task it starts to read the block's metadata: that task
    needs a free CPU outside the caller's placement group, and a sweep whose trials hold every CPU of a
    fixed-size cluster would wait for it forever (each trial's first stream). The metadata is computed
    here instead, through Ray Data's own (private) pieces; a Ray without them takes the public path."""
    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators.from_operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data._internal.util import get_table_block_metadata_schema
        from ray.data.dataset import MaterializedDataset
    except ImportError:
        return ray.data.from_arrow(table)
    meta = [get_table_block_metadata_schema(table)]
    context = ray.data.DataContext.get_current().copy()
    stats = DatasetStats(metadata={"FromArrow": meta}, parent=None)
    return MaterializedDataset(LogicalPlan(FromArrow([ray.put(table)], meta), context), context, stats)


# Small streams an actor already read, by stream, task weights and files (path, size, mtime): the
# trials a sweep actor runs one after another read the forget and retain shards once. Only in actors:
# a driver can shut Ray down and start another, and a block of the first would be gone.
READ_CACHE_STREAMS = 4
_READ: dict[tuple[Any, ...], ray.data.Dataset] = {}


def _file_id(f: Path) -> tuple[str, int, int]:
    st = f.stat()
    return (str(f.resolve()), st.st_size, st.st_mtime_ns)
