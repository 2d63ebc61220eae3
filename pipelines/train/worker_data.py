"""What a training worker reads: its shard of each stream as collated batches, epoch after epoch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray
import ray.train
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines.shards import rows_with_images
from unlearn_core.data.encode import collate
from unlearn_core.data.teacher_cache import attach_teacher_topk
from unlearn_core.training.loop import cycle


def collate_shard_batch(
    batch: dict[str, np.ndarray], processor: Any, prefixes: tuple[str, ...]
) -> dict[str, Any]:
    """Ray Data numpy batch -> padded tensors for every view (+ PUBG's cached teacher top-k)."""
    keys = list(batch)
    rows = rows_with_images([{k: batch[k][i] for k in keys} for i in range(len(batch[keys[0]]))])
    out = collate(rows, processor, prefixes=prefixes)
    attach_teacher_topk(out, rows)  # PUBG's cached teacher, when the rows carry it
    return out


class ShardCollate(NumpyBatchCollateFn):
    """``iter_torch_batches``' collate (one of Ray's collate classes: a plain function is deprecated):
    :func:`collate_shard_batch`, after handing the raw numpy batch to ``keep`` (the epoch cache)."""

    def __init__(self, processor: Any, prefixes: tuple[str, ...], keep: Any = None) -> None:
        self.processor, self.prefixes, self.keep = processor, prefixes, keep

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.keep is not None:
            self.keep(batch)
        return collate_shard_batch(batch, self.processor, self.prefixes)


# A worker keeps the raw rows of its shard after the first epoch when they take less than this:
# later epochs then shuffle and collate them in memory instead of asking Ray Data to run the read
# again, whose start-up per epoch dominated small forget sets (bench/train_step.py).
EPOCH_CACHE_MAX_BYTES = int(os.environ.get("UNLEARN_EPOCH_CACHE_MAX_BYTES", 256 << 20))


def iter_shard(
    name: str, batch_size: int, processor: Any, prefixes: tuple[str, ...], seed: int, shard: Any = None
):
    """Collated batches of stream ``name``, epoch after epoch; ``shard``: the worker's share of it
    (default: the Ray Train worker's ``get_dataset_shard(name)``)."""
    if shard is None:
        shard = ray.train.get_dataset_shard(name)
    cache = EpochCache(EPOCH_CACHE_MAX_BYTES)

    def make_iter(epoch: int):
        if cache.complete:
            return cache.batches(
                batch_size, seed + epoch, lambda b: collate_shard_batch(b, processor, prefixes)
            )

        def first_pass():
            yield from shard.iter_torch_batches(
                batch_size=batch_size,
                collate_fn=ShardCollate(processor, prefixes, keep=cache.add),
                local_shuffle_buffer_size=max(4 * batch_size, 256),
                local_shuffle_seed=seed + epoch,
                drop_last=False,
            )
            cache.finish_epoch()

        return first_pass()

    return cycle(make_iter)


class EpochCache:
    """The raw numpy batches of one full epoch, kept while they fit in ``max_bytes``.

    ``add`` runs inside Ray Data's collate, which a thread pool calls in whatever order its threads
    finish (Ray restores the order of the batches it yields, not of our side effect). So the kept
    rows are put in one canonical order, by ``order_key`` (the shards' sample id), before later
    epochs shuffle them: the same seed then gives the same batches however the threads ran.
    """

    def __init__(self, max_bytes: int, order_key: str = "sample_id") -> None:
        self.order_key = order_key
        self.max_bytes = max_bytes
        self.columns: dict[str, list[np.ndarray]] = {}
        self.nbytes = 0
        self.overflow = False
        self.complete = False

    def add(self, batch: dict[str, np.ndarray]) -> None:
        if self.overflow or self.complete:
            return
        self.nbytes += sum(_nbytes(v) for v in batch.values())
        if self.nbytes > self.max_bytes:
            self.overflow, self.columns = True, {}
            return
        for k, v in batch.items():
            self.columns.setdefault(k, []).append(v)

    def finish_epoch(self) -> None:
        """Called after a whole epoch went through ``add``: from now on epochs come from memory."""
        self.complete = not self.overflow and bool(self.columns)
        if self.complete:
            cols = {k: np.concatenate(v) for k, v in self.columns.items()}
            if self.order_key not in cols:
                raise KeyError(
                    f"epoch cache: the stream has no {self.order_key!r} column to order its rows by"
                )
            canonical = np.argsort(cols[self.order_key], kind="stable")
            self.columns = {k: v[canonical] for k, v in cols.items()}  # type: ignore[misc]

    def batches(self, batch_size: int, seed: int, collate_fn: Any):
        cols: dict[str, np.ndarray] = self.columns  # type: ignore[assignment]
        n = len(next(iter(cols.values())))
        order = np.random.default_rng(seed).permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield collate_fn({k: v[idx] for k, v in cols.items()})


def _nbytes(values: np.ndarray) -> int:
    if values.dtype != object:
        return int(values.nbytes)
    return sum(len(v) if isinstance(v, bytes | str) else getattr(v, "nbytes", 64) for v in values)
