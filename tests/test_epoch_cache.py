"""The worker's in-memory epoch cache: later epochs reshuffle the first epoch's rows, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.train.worker_data import EpochCache


def batches_of(n: int, size: int) -> list[dict[str, np.ndarray]]:
    ids = np.arange(n)
    blobs = np.array([bytes([i % 256]) * 10 for i in range(n)], dtype=object)
    return [{"id": ids[i : i + size], "blob": blobs[i : i + size]} for i in range(0, n, size)]


def test_cached_epochs_hold_every_row_once_in_a_new_order() -> None:
    cache = EpochCache(max_bytes=1 << 20, order_key="id")
    for b in batches_of(10, 4):
        cache.add(b)
    assert not cache.complete
    cache.finish_epoch()
    assert cache.complete
    epochs = [[b for b in cache.batches(4, seed, lambda b: b)] for seed in (1, 2)]
    for batches in epochs:
        assert [len(b["id"]) for b in batches] == [4, 4, 2]
        ids = np.concatenate([b["id"] for b in batches])
        assert sorted(ids.tolist()) == list(range(10))
        for b in batches:  # columns stay aligned row by row
            assert all(blob == bytes([i % 256]) * 10 for i, blob in zip(b["id"], b["blob"], strict=True))
    order = [np.concatenate([b["id"] for b in e]).tolist() for e in epochs]
    assert order[0] != order[1] and order[0] != list(range(10))


def test_later_epochs_do_not_depend_on_the_order_the_collate_threads_kept_the_batches() -> None:
    """Ray Data runs the collate (and so ``add``) in a thread pool: under load the batches of the first
    epoch can reach the cache in another order. The epochs served from memory must not change."""
    ids = np.array([f"s{i:03d}" for i in range(23)], dtype=object)
    rows = np.arange(23) * 10
    batches = [{"sample_id": ids[i : i + 5], "x": rows[i : i + 5]} for i in range(0, 23, 5)]

    def later_epochs(order: list[int]) -> list[list[int]]:
        cache = EpochCache(max_bytes=1 << 20)
        for i in order:
            cache.add(batches[i])
        cache.finish_epoch()
        return [
            np.concatenate([b["x"] for b in cache.batches(5, seed, lambda b: b)]).tolist() for seed in (1, 2)
        ]

    as_read = later_epochs([0, 1, 2, 3, 4])
    assert later_epochs([1, 0, 2, 4, 3]) == as_read and later_epochs([4, 3, 2, 1, 0]) == as_read
    assert sorted(as_read[0]) == rows.tolist() and as_read[0] != as_read[1]
    no_key = EpochCache(max_bytes=1 << 20)
    no_key.add({"x": rows[:3]})
    with pytest.raises(KeyError, match="no 'sample_id' column"):
        no_key.finish_epoch()


def test_a_stream_larger_than_the_budget_is_not_cached() -> None:
    cache = EpochCache(max_bytes=100)  # 10 rows x (8 B id + 10 B blob) = 180 B
    for b in batches_of(10, 4):
        cache.add(b)
    cache.finish_epoch()
    assert not cache.complete and cache.overflow and cache.columns == {}


def test_prefetch_keeps_order_and_raises_the_producers_error():
    from unlearn_core.training.loop import prefetch

    batches = [{"i": i} for i in range(10)]
    assert list(prefetch(iter(batches), 3)) == batches
    plain = iter(batches)
    assert prefetch(plain, 0) is plain  # off: the iterator itself

    def broken():
        yield {"i": 0}
        raise ValueError("corrupt shard row 7")

    got = prefetch(broken(), 2)
    assert next(got) == {"i": 0}
    with pytest.raises(ValueError, match="corrupt shard row 7"):
        next(got)


def test_length_grouped_batches_hold_every_row_once_with_little_padding() -> None:
    """``group_by_length``: rows of one batch have similar lengths (a batch is padded to its longest),
    every row still comes once per epoch, the same seed gives the same batches."""
    rng = np.random.default_rng(0)
    n, size = 200, 8
    lengths = np.where(rng.random(n) < 0.3, 80, 15) + rng.integers(0, 5, n)  # the vanilla mix: 30% long
    ids = np.array([f"s{i:03d}" for i in range(n)], dtype=object)
    seqs = np.empty(n, dtype=object)
    seqs[:] = [np.ones(k, dtype=np.int64) for k in lengths]

    def epoch(seed: int, grouped: bool) -> list[dict[str, np.ndarray]]:
        cache = EpochCache(max_bytes=1 << 24, length_prefixes=("",) if grouped else None)
        cache.add({"sample_id": ids, "input_ids": seqs})
        cache.finish_epoch()
        return list(cache.batches(size, seed, lambda b: b))

    def padded_tokens(batches: list[dict[str, np.ndarray]]) -> int:
        return sum(max(len(s) for s in b["input_ids"]) * len(b["input_ids"]) for b in batches)

    grouped, plain = epoch(1, True), epoch(1, False)
    real = int(lengths.sum())
    assert sorted(np.concatenate([b["sample_id"] for b in grouped]).tolist()) == ids.tolist()
    assert [len(b["sample_id"]) for b in grouped].count(size) == n // size
    assert padded_tokens(grouped) < 1.1 * real < padded_tokens(plain) / 1.3
    again, other = epoch(1, True), epoch(2, True)
    assert [b["sample_id"].tolist() for b in again] == [b["sample_id"].tolist() for b in grouped]
    assert [b["sample_id"].tolist() for b in other] != [b["sample_id"].tolist() for b in grouped]


def test_length_grouped_shuffles_windows_and_keeps_each_row_once() -> None:
    from pipelines.train.worker_data import MEGABATCH, length_grouped

    order = np.random.default_rng(3).permutation(1000)
    lengths = np.arange(1000) % 97
    batches = length_grouped(order, lengths, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    window = MEGABATCH * 4
    first = {int(i) for i in order[:window]}
    for b in batches:  # a batch never mixes rows of two sorting windows
        inside = {int(i) in first for i in b}
        assert len(inside) == 1
    spans = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    assert np.mean(spans) < 3  # sorted within a window of 200 rows over 97 lengths
    assert [lengths[b].max() for b in batches] != sorted((lengths[b].max() for b in batches), reverse=True)


def test_grouping_a_stream_larger_than_the_cache_is_an_error(ray_local, monkeypatch) -> None:
    """Grouped batches need the whole stream in memory; streaming it ungrouped instead would silently
    change the run (it did, before this was an error)."""
    import ray

    from pipelines.train import worker_data

    monkeypatch.setattr(worker_data, "EPOCH_CACHE_MAX_BYTES", 100)
    rows = [
        {"sample_id": f"s{i:02d}", "input_ids": list(range(5 + i)), "labels": list(range(5 + i))}
        for i in range(20)
    ]
    stream = worker_data.iter_shard(
        "train", 4, None, ("",), seed=0, shard=ray.data.from_items(rows), group_by_length=True
    )
    with pytest.raises(ValueError, match="train.group_by_length: stream 'train' holds more than"):
        next(stream)
