"""validate_rows (row quarantine, dataset-level errors, reconciliation), records_io, validate_records_dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from real_fixtures import CORRUPT_IMAGE, png_bytes, truncated_png

from unlearn_core.data import records_io
from unlearn_core.data.schema import ARROW_SCHEMA, Record, RecordError
from unlearn_core.data.validate import validate_records_dir, validate_rows

PNG = png_bytes()
_DROP = object()  # marks a field to leave out of the row


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sample_id": "s-1",
        "entity_id": "person-1",
        "split": "forget",
        "task": "identity_vqa",
        "image": PNG,
        "question": "Who is this person?",
        "answer": "Ada Quill",
        "options": None,
        "private_facts": {"name": "Ada Quill"},
        "visible_attributes": {"shirt": "red"},
        "source": "test",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


def test_good_row_is_normalised() -> None:
    result = validate_rows([("a#0", row(question=b"Who is this person?"))])
    assert result.counts == {"read": 1, "good": 1, "quarantined": 0, "reasons": {}}
    good = result.good[0]
    assert good["question"] == "Who is this person?"  # UTF-8 bytes are decoded
    assert json.loads(good["private_facts"]) == {"name": "Ada Quill"}
    assert result.origins == ["a#0"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"question": _DROP}, "question: missing required field"),
        ({"question": 42}, "question: expected str, got int"),
        ({"answer": "   "}, "answer: empty"),
        ({"question": ""}, "question: empty"),
        ({"split": "train"}, "split: invalid 'train'"),
        ({"task": "poetry"}, "task: invalid 'poetry'"),
        ({"image": CORRUPT_IMAGE}, "image: cannot decode"),
        ({"image": truncated_png()}, "image: cannot decode"),
        ({"image": "img.png"}, "image: expected encoded image bytes, got str"),
        ({"image": None}, "image: missing, task identity_vqa needs an image"),
        ({"task": "text_qa"}, "image: task text_qa is text-only but the row has an image"),
        ({"answer": b"caf\xe9"}, "answer: not valid UTF-8"),
        ({"task": "mc_vqa", "options": ["A", "B"]}, "answer: 'Ada Quill' is not among the options"),
        ({"task": "mc_vqa", "options": None}, "options: missing for multiple-choice task mc_vqa"),
        ({"task": "mc_vqa", "options": "Ada Quill"}, "options: expected a list of str, got str"),
        ({"task": "mc_vqa", "options": ["Ada Quill", None]}, "options: item 1 is null"),
        ({"private_facts": "[1, 2]"}, "private_facts: expected a JSON object, got list"),
    ],
)
def test_row_problems_are_quarantined_with_a_named_reason(changes: dict[str, Any], reason: str) -> None:
    result = validate_rows([("good#0", row(sample_id="ok")), ("bad#1", row(sample_id="bad", **changes))])
    assert [g["sample_id"] for g in result.good] == ["ok"]
    (entry,) = result.quarantined
    assert entry["origin"] == "bad#1"
    assert entry["reason"].startswith(reason), entry["reason"]
    assert result.counts["read"] == result.counts["good"] + result.counts["quarantined"] == 2
    assert result.counts["reasons"] == {reason.split(":")[0]: 1}


def test_adapter_rejections_count_as_read_and_quarantined() -> None:
    rejected = [{"origin": "src#9", "reason": "ID: column missing", "row": {"x": 1}}]
    result = validate_rows([("src#0", row())], rejected=rejected)
    assert result.counts["read"] == 2 and result.counts["quarantined"] == 1 and len(result.good) == 1


def test_duplicate_sample_ids_are_an_error_naming_ids_and_origins() -> None:
    rows = [("f.parquet#0", row()), ("f.parquet#5", row()), ("g#1", row(sample_id="s-2"))]
    with pytest.raises(RecordError) as err:
        validate_rows(rows)
    message = str(err.value)
    assert "duplicate sample_id" in message and "'s-1'" in message
    assert "f.parquet#0" in message and "f.parquet#5" in message and "s-2" not in message


@pytest.mark.parametrize(
    ("forget", "retain"),
    [
        ("forget", "retain"),
        ("forget_unseen", "retain"),
        ("forget_unseen", "retain_unseen"),
        ("forget", "retain_unseen"),
    ],
)
def test_entity_on_both_sides_is_an_error_naming_it(forget: str, retain: str) -> None:
    rows = [
        ("a#0", row(sample_id="1", split=forget)),
        ("b#0", row(sample_id="2", split=retain)),
        ("c#0", row(sample_id="3", split="utility")),
    ]
    with pytest.raises(RecordError) as err:
        validate_rows(rows)
    message = str(err.value)
    assert "'person-1'" in message and "meaningless" in message and "a#0" in message and "b#0" in message


@pytest.mark.parametrize("other", ["forget", "retain_unseen", "utility"])
def test_holdout_person_in_another_split_is_an_error_naming_it(other: str) -> None:
    rows = [("a#0", row(sample_id="1", split="holdout")), ("b#0", row(sample_id="2", split=other))]
    with pytest.raises(RecordError) as err:
        validate_rows(rows)
    message = str(err.value)
    assert "1 holdout entity" in message and "'person-1'" in message and f"{other} (b#0)" in message
    assert (
        len(validate_rows([rows[0], ("c#0", row(sample_id="3", entity_id="other", split=other))]).good) == 2
    )


def test_utility_people_may_repeat_forget_people() -> None:
    result = validate_rows([("a#0", row(sample_id="1")), ("b#0", row(sample_id="2", split="utility"))])
    assert len(result.good) == 2


# ------------------------------------------------------------------------------------- records_io


def _records() -> list[Record]:
    return [
        Record("b", "p1", "forget", "identity_vqa", "Who?", "Ada", image=PNG, private_facts={"name": "Ada"}),
        Record("a", "p1", "forget", "text_qa", "Where does Ada live?", "Lyon"),
        Record("c", "p2", "retain", "mc_text", "Pick one", "x", options=["x", "y"], source="t"),
    ]


def test_write_read_round_trip(tmp_path: Path) -> None:
    quarantine = [{"origin": "z#1", "reason": "answer: empty", "row": {"answer": "", "image": PNG}}]
    counts = records_io.write_records(_records(), tmp_path / "r", source="unit", quarantine=quarantine)
    assert counts["total"] == 3 and counts["quarantined"] == 1
    assert counts["splits"]["forget"] == {"total": 2, "tasks": {"identity_vqa": 1, "text_qa": 1}}
    table = records_io.read_records(tmp_path / "r")
    assert table.schema.equals(ARROW_SCHEMA)
    assert table["sample_id"].to_pylist() == ["a", "b", "c"]  # sorted within each split
    back = {r.sample_id: r for r in records_io.iter_records(tmp_path / "r")}
    assert back == {r.sample_id: r for r in _records()}
    assert records_io.read_records(tmp_path / "r", ["utility"]).num_rows == 0
    q = records_io.read_quarantine(tmp_path / "r").to_pylist()
    assert q[0]["reason"] == "answer: empty" and json.loads(q[0]["row"])["image"]["$bytes"] == len(PNG)
    meta = records_io.read_meta(tmp_path / "r")
    assert meta["source"] == "unit" and meta["schema_version"] == records_io.RECORDS_SCHEMA_VERSION


def test_identical_input_gives_identical_bytes(tmp_path: Path) -> None:
    records_io.write_records(_records(), tmp_path / "x", source="unit")
    records_io.write_records(list(reversed(_records())), tmp_path / "y", source="unit")
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "y").iterdir())
    for name in names:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes(), name


def test_rewrite_removes_stale_split_files(tmp_path: Path) -> None:
    records_io.write_records(_records(), tmp_path, source="unit")
    records_io.write_records(_records()[:2], tmp_path, source="unit")
    assert not (tmp_path / "retain.parquet").exists()
    assert records_io.read_records(tmp_path).num_rows == 2


def test_write_refuses_duplicates_and_unknown_splits(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="duplicate sample_id"):
        records_io.write_records([_records()[0], _records()[0]], tmp_path, source="unit")
    bad = Record("z", "p", "train", "text_qa", "q", "a")
    with pytest.raises(RecordError, match="unknown split"):
        records_io.write_records([bad], tmp_path, source="unit")


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="does not exist"):
        records_io.read_records(tmp_path / "nope")
    records_io.write_records(_records(), tmp_path / "r", source="unit")
    path = tmp_path / "r" / "forget.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["answer"]), path)
    with pytest.raises(RecordError, match=r"forget\.parquet: missing column 'answer'"):
        records_io.read_records(tmp_path / "r")
    wrong = table.set_column(table.schema.get_field_index("question"), "question", pa.array([1, 2]))
    pq.write_table(wrong, path)
    with pytest.raises(
        RecordError, match=r"forget\.parquet: column 'question' has type int64, expected string"
    ):
        records_io.read_records(tmp_path / "r", ["forget"])
    (tmp_path / "r" / records_io.META_FILE).unlink()
    with pytest.raises(RecordError, match="records_meta.json is missing"):
        records_io.read_records(tmp_path / "r")


# ------------------------------------------------------------------------------ validate_records_dir


def test_validate_records_dir_ok(tmp_path: Path) -> None:
    records_io.write_records(_records(), tmp_path, source="unit")
    report = validate_records_dir(tmp_path)
    assert report.ok and report.total == 3 and "OK" in report.render()


def test_validate_records_dir_finds_tampering(tmp_path: Path) -> None:
    records_io.write_records(_records(), tmp_path, source="unit")
    forget = pq.read_table(tmp_path / "forget.parquet").to_pylist()
    forget[1]["image"] = CORRUPT_IMAGE
    extra = dict(forget[0], split="retain")  # same sample_id and entity, now also in retain
    retain = pq.read_table(tmp_path / "retain.parquet").to_pylist() + [extra]
    pq.write_table(pa.Table.from_pylist(forget, schema=ARROW_SCHEMA), tmp_path / "forget.parquet")
    pq.write_table(pa.Table.from_pylist(retain, schema=ARROW_SCHEMA), tmp_path / "retain.parquet")
    report = validate_records_dir(tmp_path)
    text = report.render()
    assert not report.ok
    assert "forget.parquet#1 ('b'): image: cannot decode" in text
    assert "duplicate sample_id" in text and "'p1'" in text and "meaningless" in text
    assert "split 'retain' counts 1 rows, files hold 2" in text


def test_validate_records_dir_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="does not exist"):
        validate_records_dir(tmp_path / "missing")
