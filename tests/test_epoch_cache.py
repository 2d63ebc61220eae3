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
    cache = EpochCache(max_bytes=1 << 20)
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
