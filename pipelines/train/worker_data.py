"""What a training worker reads: its shard of each stream as collated batches, epoch after epoch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray
import ray.train
from ray.data.collate_fn import NumpyBatchCollateFn

from pipelines.shards import rows_with_images
from unlearn_core.data.encode import IGNORE_INDEX, collate
from unlearn_core.data.teacher_cache import attach_teacher_topk
from unlearn_core.training.loop import cycle
from unlearn_core.training.steps import ANSWER_TOKEN_NORM


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
    name: str,
    batch_size: int,
    processor: Any,
    prefixes: tuple[str, ...],
    seed: int,
    shard: Any = None,
    group_by_length: bool = False,
):
    """Collated batches of stream ``name``, epoch after epoch; ``shard``: the worker's share of it
    (default: the Ray Train worker's ``get_dataset_shard(name)``).

    ``group_by_length``: every epoch, the first one included, comes from memory in batches of rows of
    similar length (:meth:`EpochCache.batches`); the rows are read once before the first step. A
    shard too large for the cache is an error (streaming it ungrouped would silently change the run).
    """
    if shard is None:
        shard = ray.train.get_dataset_shard(name)
    cache = EpochCache(EPOCH_CACHE_MAX_BYTES, length_prefixes=prefixes if group_by_length else None)

    def make_iter(epoch: int):
        if group_by_length and epoch == 0:
            for raw in shard.iter_batches(batch_size=8 * batch_size, batch_format="numpy"):
                cache.add(raw)
            cache.finish_epoch()
            if not cache.complete:
                raise ValueError(
                    f"train.group_by_length: stream {name!r} holds more than the epoch cache's "
                    f"{EPOCH_CACHE_MAX_BYTES / 2**20:.0f} MiB per worker (UNLEARN_EPOCH_CACHE_MAX_BYTES); "
                    "raise it, use more workers, or set train.group_by_length=false"
                )
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

    def __init__(
        self, max_bytes: int, order_key: str = "sample_id", length_prefixes: tuple[str, ...] | None = None
    ) -> None:
        self.order_key = order_key
        self.max_bytes = max_bytes
        # Group batches by the summed length of these views' ``input_ids`` (None: plain shuffles).
        self.length_prefixes = length_prefixes
        self.lengths: np.ndarray | None = None
        self.answer_tokens_per_row: float | None = None
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
            if self.length_prefixes is not None:
                self.lengths = np.zeros(len(canonical), dtype=np.int64)
                for p in self.length_prefixes:
                    self.lengths += [len(ids) for ids in self.columns[f"{p}input_ids"]]
                if "labels" in self.columns:  # the fine-tune's view: its loss normaliser
                    answer = sum(int(np.sum(np.asarray(y) != IGNORE_INDEX)) for y in self.columns["labels"])
                    self.answer_tokens_per_row = answer / len(canonical)

    def batches(self, batch_size: int, seed: int, collate_fn: Any):
        cols: dict[str, np.ndarray] = self.columns  # type: ignore[assignment]
        n = len(next(iter(cols.values())))
        rng = np.random.default_rng(seed)
        order = rng.permutation(n)
        if self.lengths is None:
            groups = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        else:
            groups = length_grouped(order, self.lengths, batch_size, rng)
        for idx in groups:
            batch = collate_fn({k: v[idx] for k, v in cols.items()})
            if self.lengths is not None and self.answer_tokens_per_row is not None:
                batch[ANSWER_TOKEN_NORM] = self.answer_tokens_per_row * batch_size
            yield batch


# Rows per sorting window of ``length_grouped``, in batches (transformers' LengthGroupedSampler: 50).
MEGABATCH = 50


def length_grouped(
    order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches of ``order`` (a shuffled permutation) whose rows have similar ``lengths``: each window of
    ``MEGABATCH`` batches is sorted by length and cut into batches, then the batches are shuffled.

    A batch is padded to its longest row, so a random batch of the vanilla mix (text answers of 15
    tokens beside guided answers of 88) computes 1.7x the tokens it holds; grouped, about 1.0x. Every
    row still comes once per epoch; which rows share a batch is what changes.
    """
    batches: list[np.ndarray] = []
    window = MEGABATCH * batch_size
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _nbytes(values: np.ndarray) -> int:
    if values.dtype != object:
        return int(values.nbytes)
    return sum(len(v) if isinstance(v, bytes | str) else getattr(v, "nbytes", 64) for v in values)
