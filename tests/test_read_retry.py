"""Training streams are read again when a node went away mid-read, and only then."""

from __future__ import annotations

import pytest
import ray.exceptions

from pipelines.shards.read import _lost_a_node, materialize_with_retry


class FlakyRead:
    """A dataset whose ``materialize`` raises the given errors in turn, then returns itself."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors, self.calls = list(errors), 0

    def materialize(self) -> FlakyRead:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self


def node_loss() -> BaseException:
    """What Ray Data raised in the autoscaling test: the cause chain ends in an ActorDiedError."""
    try:
        try:
            raise ray.exceptions.ActorDiedError()
        except ray.exceptions.ActorDiedError as died:
            raise RuntimeError("Failed to deserialize exception") from died
    except RuntimeError as err:
        return err


def test_node_loss_is_recognised_through_the_cause_chain_and_a_data_error_is_not() -> None:
    assert _lost_a_node(node_loss())
    assert _lost_a_node(RuntimeError("The actor died because its node has died. Terminated by autoscaler."))
    assert not _lost_a_node(ValueError("part-00000.parquet: Parquet magic bytes not found"))


def test_a_read_that_lost_a_node_is_read_again_and_a_data_error_is_raised_at_once() -> None:
    ds = FlakyRead(node_loss(), node_loss())
    assert materialize_with_retry(ds, what="forget stream") is ds and ds.calls == 3  # type: ignore[arg-type]

    ds = FlakyRead(node_loss(), node_loss(), node_loss())
    with pytest.raises(RuntimeError, match="deserialize"):
        materialize_with_retry(ds, what="forget stream")  # type: ignore[arg-type]
    assert ds.calls == 3  # retries are bounded

    ds = FlakyRead(ValueError("corrupt shard"))
    with pytest.raises(ValueError, match="corrupt shard"):
        materialize_with_retry(ds, what="forget stream")  # type: ignore[arg-type]
    assert ds.calls == 1
