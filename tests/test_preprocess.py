"""Ray Data shards: real local Ray, real Parquet, the real tiny processor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import AutoProcessor

from pipelines.shards.build import shard_records
from tests.pipeline_fixtures import write_tiny_records
from unlearn_core.data.records_io import read_records, write_records
from unlearn_core.methods import METHODS, ShardView
from unlearn_core.methods.ga import GradientAscent


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_tiny_records(tmp_path_factory.mktemp("records"))


def test_shards_counts_images_and_labels(ray_local, records, tmp_path):
    report = shard_records(records, tmp_path / "shards", image_size=32)
    n = read_records(records).num_rows
    assert report.read == n == report.written + report.quarantined
    assert report.quarantined == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["read"] == n and sum(manifest["rows_per_split"].values()) == n
    assert set(manifest["rows_per_split"]) == {
        "forget",
        "retain",
        "forget_unseen",
        "retain_unseen",
        "utility",
        "describe",
        "holdout",  # people no model trains on: the audit's non-members
    }
    forget = pq.read_table(tmp_path / "shards" / "forget").to_pylist()
    image_rows = [r for r in forget if r["image_u8"] is not None]
    assert image_rows and all(
        len(r["image_u8"]) == 32 * 32 * 3 and r["image_hw"] == [32, 32] for r in image_rows
    )
    # Images are compact uint8, not float tensors.
    assert (
        pq.read_schema(tmp_path / "shards" / "forget" / "part-00000.parquet").field("image_u8").type
        == "binary"
    )
    for r in forget:
        ids, labels = np.array(r["input_ids"]), np.array(r["labels"])
        answer = labels != -100
        assert answer.any() and not answer[0]  # prompt tokens are masked
        assert (labels[answer] == ids[answer]).all()
        first = int(np.argmax(answer))
        assert answer[first:].all()  # answer tokens are one contiguous suffix
        # Forget rows carry the reject/random baselines' views.
        assert r["idk_input_ids"] is not None
    assert any(r["rand_input_ids"] is not None for r in forget)


def test_describe_rows_feed_only_the_vanilla_fine_tune(ray_local, records, tmp_path):
    from pipelines.shards.read import stream_dataset

    shards = tmp_path / "shards"
    shard_records(records, shards, image_size=32)
    n_describe = pq.read_table(shards / "describe").num_rows
    assert n_describe == 2 * 4  # TINY_SYNTH: 4 anonymous faces, a caption and a guided answer each

    def splits(stream: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in stream_dataset(shards, stream).select_columns(["split"]).iter_rows():
            counts[row["split"]] = counts.get(row["split"], 0) + 1
        return counts

    assert splits("train")["describe"] == n_describe
    assert "describe" not in splits("forget") and "describe" not in splits("retain")


def test_fingerprint_skips_and_rebuilds(ray_local, records, tmp_path):
    first = shard_records(records, tmp_path / "s", image_size=32)
    again = shard_records(records, tmp_path / "s", image_size=32)
    assert again.skipped and again.fingerprint == first.fingerprint
    other = shard_records(records, tmp_path / "s", image_size=24)
    assert not other.skipped and other.fingerprint != first.fingerprint
    # Identical inputs give identical shard bytes.
    shard_records(records, tmp_path / "t", image_size=24)
    for split in ("forget", "retain"):
        a = (tmp_path / "s" / split / "part-00000.parquet").read_bytes()
        b = (tmp_path / "t" / split / "part-00000.parquet").read_bytes()
        assert a == b


def test_corrupt_image_is_quarantined_with_reason(ray_local, records, tmp_path):
    rows = read_records(records).to_pylist()
    victim = next(r for r in rows if r["image"] is not None and r["split"] == "retain")
    victim["image"] = victim["image"][:40]  # truncated PNG
    bad_dir = tmp_path / "bad"
    write_records(rows, bad_dir, source="synthetic")
    report = shard_records(bad_dir, tmp_path / "shards", image_size=32)
    assert report.quarantined == 1 and report.read == report.written + 1
    q = pq.read_table(tmp_path / "shards" / "quarantine.parquet").to_pylist()
    assert q[0]["sample_id"] == victim["sample_id"]
    assert "image" in q[0]["quarantine_reason"].lower() or "identify" in q[0]["quarantine_reason"].lower()


class _EchoQuestion(GradientAscent):
    """A method that needs a new shard view: each forget row answered with its own question."""

    name = "echo_question"
    views = ("echo_",)
    shard_views = (ShardView("echo_", lambda rows, seed: {r["sample_id"]: r["question"] for r in rows}),)


def test_a_method_declaring_a_shard_view_gets_it_written_without_touching_the_pipeline(
    ray_local, records, tmp_path, monkeypatch
):
    """One file plus one registry line: registering the method is all it takes for every set of shards
    to carry its view (the fingerprint changes with it, so existing shards are rebuilt)."""
    plain = shard_records(records, tmp_path / "s", image_size=32)
    monkeypatch.setitem(METHODS, _EchoQuestion.name, _EchoQuestion)
    report = shard_records(records, tmp_path / "s", image_size=32)
    assert not report.skipped and report.fingerprint != plain.fingerprint
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["config"]["views"] == ["idk_", "rand_", "echo_"]
    tok = AutoProcessor.from_pretrained(tmp_path / "s" / "processor").tokenizer
    forget = pq.read_table(tmp_path / "s" / "forget").to_pylist()
    for r in forget:
        ids, labels = np.array(r["echo_input_ids"]), np.array(r["echo_labels"])
        answer = tok.decode(ids[labels != -100], skip_special_tokens=True)
        assert answer.split() == tok.decode(tok(r["question"])["input_ids"], skip_special_tokens=True).split()
    retain = pq.read_table(tmp_path / "s" / "retain").to_pylist()
    assert retain and all(r["echo_input_ids"] is None for r in retain)


def test_an_actor_reads_a_small_stream_once_until_its_files_change(ray_local, records, tmp_path):
    """A sweep actor runs trial after trial on the same shards: the second read of a stream is the
    block the first read put in the object store; a rewritten shard file is read again; a driver
    (which may shut its Ray down and start another) keeps nothing."""
    import os

    import ray

    from pipelines.shards.read import _READ, stream_dataset

    shards = tmp_path / "shards"
    shard_records(records, shards, image_size=32)

    @ray.remote(num_cpus=0)
    class Reader:
        def reads(self, path: str) -> tuple[bool, bool, bool, list[str]]:
            first = stream_dataset(Path(path), "retain")
            same = stream_dataset(Path(path), "retain") is first
            other_weights = stream_dataset(Path(path), "retain", task_weights={"mc_vqa": 2}) is not first
            part = sorted((Path(path) / "retain").rglob("*.parquet"))[0]
            st = part.stat()
            os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
            changed = stream_dataset(Path(path), "retain")
            ids = [r["sample_id"] for r in changed.iter_rows()]
            assert ids == [r["sample_id"] for r in first.iter_rows()]
            return same, other_weights, changed is not first, ids

    same, other_weights, reread, ids = ray.get(Reader.remote().reads.remote(str(shards)))
    assert same and other_weights and reread
    assert len(ids) > 10
    stream_dataset(shards, "retain")
    assert not _READ  # this test process is a driver
