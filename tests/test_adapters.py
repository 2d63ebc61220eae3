"""Adapters on tiny fixtures in the published schemas: task/split mapping, quarantine, errors, determinism."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import real_fixtures as rf

from unlearn_core.data import records_io
from unlearn_core.data.adapters import ConvertReport, UnknownFormatError, convert, format_names, get_converter
from unlearn_core.data.schema import RecordError
from unlearn_core.data.validate import validate_records_dir


def by_id(out: Path) -> dict[str, dict[str, Any]]:
    return {r["sample_id"]: r for r in records_io.read_records(out).to_pylist()}


def assert_reconciled(report: ConvertReport, out: Path) -> None:
    totals = report.totals
    assert totals["read"] == totals["written"] + totals["quarantined"]
    for name, c in report.configs.items():
        assert c.read == c.written + c.quarantined, name
    assert records_io.read_quarantine(out).num_rows == totals["quarantined"]
    meta = records_io.read_meta(out)["counts"]
    assert meta["total"] == totals["written"] and meta["quarantined"] == totals["quarantined"]
    assert validate_records_dir(out).ok


# ----------------------------------------------------------------------------------- MLLMU-Bench


def test_mllmu_question_families_land_in_the_right_task_and_split(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    rf.write_mllmu_bench(tmp_path / "src", tables)
    report = convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out")
    photo = tables["forget_5"][0]["image"]["bytes"]

    mc = rows["mllmu:forget_5:1:mc_vqa:00"]
    assert (mc["split"], mc["entity_id"], mc["image"]) == ("forget", "mllmu:1", photo)
    assert mc["options"] == ["painter", "lawyer-1", "pilot", "chef"] and mc["answer"] == "lawyer-1"
    text_mc = rows["mllmu:forget_5:1:mc_text:00"]
    assert text_mc["image"] is None and text_mc["answer"] == "Town 1" and text_mc["options"][2] == "Town 1"
    assert rows["mllmu:forget_5:1:generation:00"]["image"] == photo
    assert rows["mllmu:forget_5:1:generation:01"]["image"] is None
    assert (
        rows["mllmu:forget_5:1:cloze:00"]["image"] == photo
        and rows["mllmu:forget_5:1:cloze:00"]["answer"] == "lawyer-1"
    )
    assert rows["mllmu:forget_5:1:cloze:01"]["image"] is None
    assert rows["mllmu:forget_5:1:open_vqa:00"]["answer"].startswith("This is Ada Quill")
    facts = json.loads(mc["private_facts"])
    assert facts == {"name": "Ada Quill", "occupation": "lawyer-1", "birthplace": "Town 1"}
    assert mc["source"] == "mllmu-bench:forget_5"

    def entities(split: str, task: str | None = None) -> set[str]:
        return {r["entity_id"] for r in rows.values() if r["split"] == split and task in (None, r["task"])}

    assert entities("forget") == {"mllmu:1"} and entities("retain") == {"mllmu:2", "mllmu:3"}
    assert entities("forget_unseen") == {"mllmu:1"} and entities("retain_unseen") == {"mllmu:2", "mllmu:3"}
    assert entities("utility") == {"mllmu-real:1"}
    assert entities("forget", "fact_vqa") == {"mllmu:1"} and entities("retain", "fact_vqa") == {
        "mllmu:2",
        "mllmu:3",
    }
    fact = rows["mllmu:ft_Data:1:fact_vqa:00"]
    assert fact["answer"] == "Ada Quill" and json.loads(fact["private_facts"])["name"] == "Ada Quill"

    unseen = [r for r in rows.values() if r["split"] == "forget_unseen"]
    assert len(unseen) == sum(rf.RECORDS_PER_PROFILE.values())
    test_photos = {p["bytes"] for p in tables["Test_Set"][0]["images"]}
    used = {r["image"] for r in unseen if r["image"] is not None}
    assert used <= test_photos and photo not in used  # unseen photos only

    assert set(report.skipped_configs) == {"forget_10", "retain_90", "Full_Set"}
    assert any("'extras'" in w for w in report.warnings)
    assert report.totals["quarantined"] == 0
    assert report.configs["Test_Set"].source_rows == 3  # read across both Test_Set files
    assert_reconciled(report, tmp_path / "out")


def test_mllmu_forget_config_picks_the_matching_retain_config(tmp_path: Path) -> None:
    rf.write_mllmu_bench(tmp_path / "src")
    convert("mllmu-bench", tmp_path / "src", tmp_path / "out", forget_config="forget_10")
    rows = by_id(tmp_path / "out").values()
    assert {r["entity_id"] for r in rows if r["split"] == "forget"} == {"mllmu:1", "mllmu:2"}
    assert {r["entity_id"] for r in rows if r["split"] == "retain"} == {"mllmu:3"}
    assert {r["entity_id"] for r in rows if r["split"] == "forget_unseen"} == {"mllmu:1", "mllmu:2"}


def test_mllmu_missing_forget_config_is_an_error(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    tables["forget_15"] = tables.pop("forget_5")
    rf.write_mllmu_bench(tmp_path / "src", tables)
    with pytest.raises(RecordError, match=r"'forget_5' not found .* available: forget_10, forget_15"):
        convert("mllmu-bench", tmp_path / "src", tmp_path / "out")


def test_mllmu_lone_forget_config_is_used_without_being_named(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    del tables["forget_5"]
    rf.write_mllmu_bench(tmp_path / "src", tables)
    report = convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    assert {r["entity_id"] for r in rows if r["split"] == "forget"} == {"mllmu:1", "mllmu:2"}
    assert {r["source"] for r in rows if r["split"] == "forget"} == {
        "mllmu-bench:forget_10",
        "mllmu-bench:ft_Data",
    }
    assert {r["source"] for r in rows if r["split"] == "retain"} == {
        "mllmu-bench:retain_90",
        "mllmu-bench:ft_Data",
    }
    assert "retain_95" in report.skipped_configs


def test_mllmu_test_set_photo_is_one_per_person_and_task_family_and_seeded(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    colors = [
        (10 * k, 40, 200 - 10 * k) for k in range(8)
    ]  # 8 photos: a per-question rotation would use several
    tables["Test_Set"][0] = rf.mllmu_test_profile("1", rf.MLLMU_PEOPLE["1"], colors)
    rf.write_mllmu_bench(tmp_path / "src", tables)
    convert("mllmu-bench", tmp_path / "src", tmp_path / "a")
    convert("mllmu-bench", tmp_path / "src", tmp_path / "b")
    rows, again = by_id(tmp_path / "a"), by_id(tmp_path / "b")
    photos = {p["bytes"] for p in tables["Test_Set"][0]["images"]}
    unseen = [r for r in rows.values() if r["split"] == "forget_unseen" and r["image"] is not None]
    family = {
        "mc_vqa": "classification",
        "cloze": "cloze",
        "generation": "generation",
        "open_vqa": "open_vqa",
    }
    by_family: dict[str, set[bytes]] = {}
    for r in unseen:
        by_family.setdefault(family[r["task"]], set()).add(r["image"])
    assert set(by_family) == set(family.values())
    assert all(len(imgs) == 1 and imgs <= photos for imgs in by_family.values())  # one photo per family
    assert all(again[r["sample_id"]]["image"] == r["image"] for r in unseen)  # seeded: same every run


def test_mllmu_biography_is_optional_in_test_set_and_retain_set(tmp_path: Path) -> None:
    rf.write_mllmu_bench(
        tmp_path / "src", drop_columns={"Test_Set": ["biography"], "Retain_Set": ["biography"]}
    )
    report = convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    assert report.totals["quarantined"] == 0
    unseen = [r for r in rows if r["split"] == "forget_unseen"]
    assert unseen and all(
        json.loads(r["private_facts"])["name"] == "Ada Quill" for r in unseen
    )  # from forget_5
    celebrity = [r for r in rows if r["split"] == "utility"]
    assert len(celebrity) == sum(rf.RECORDS_PER_PROFILE.values())
    assert all(json.loads(r["private_facts"]) == {} for r in celebrity)
    assert report.configs["Retain_Set"].without_facts == 1 and report.configs["Test_Set"].without_facts == 0
    assert_reconciled(report, tmp_path / "out")


def _facts(out: Path, split: str, task: str | None = None) -> list[dict[str, Any]]:
    """The private facts of every record of ``split`` (and ``task``) in a records folder."""
    return [
        json.loads(r["private_facts"])
        for r in by_id(out).values()
        if r["split"] == split and (task is None or r["task"] == task)
    ]


def test_mllmu_biography_is_optional_in_forget_and_retain_profiles(tmp_path: Path) -> None:
    """MLLMU-Bench ``eval.py`` (franciscoliu/MLLMU-Bench, read from YokeYao/MLLMU-Bench@b83832a) never
    reads ``biography``: forget_N / retain_N rows without it convert in full, their records carry no
    private facts (or those of the same person from a later-read Test_Set row that has one) and the
    report counts every row left without facts."""
    profiles = {"forget_5": ["biography"], "retain_95": ["biography"]}
    rf.write_mllmu_bench(tmp_path / "all", drop_columns={**profiles, "Test_Set": ["biography"]})
    report = convert("mllmu-bench", tmp_path / "all", tmp_path / "out_all")
    assert report.totals["quarantined"] == 0
    per_profile = sum(rf.RECORDS_PER_PROFILE.values())
    assert len(_facts(tmp_path / "out_all", "forget", "mc_vqa")) == 1  # every question still converted
    assert report.configs["forget_5"].written == per_profile
    assert all(f == {} for split in ("forget", "retain") for f in _facts(tmp_path / "out_all", split))
    without = {name: c.without_facts for name, c in report.configs.items()}
    assert without == {"forget_5": 1, "retain_95": 2, "Test_Set": 3, "Retain_Set": 0, "ft_Data": 3}
    assert "forget_5: 1 rows without private facts" in report.render()
    assert_reconciled(report, tmp_path / "out_all")

    rf.write_mllmu_bench(tmp_path / "some", drop_columns=profiles)  # Test_Set keeps its biographies
    report = convert("mllmu-bench", tmp_path / "some", tmp_path / "out_some")
    assert all(f == {} for f in _facts(tmp_path / "out_some", "forget", "mc_vqa"))
    assert all(f["name"] == "Ada Quill" for f in _facts(tmp_path / "out_some", "forget_unseen"))
    assert all(f["name"] == "Ada Quill" for f in _facts(tmp_path / "out_some", "forget", "fact_vqa"))
    assert report.configs["ft_Data"].without_facts == 0  # lent by Test_Set, read before the training data
    assert report.configs["forget_5"].without_facts == 1 and report.configs["Test_Set"].without_facts == 0


def test_mllmu_baseline_train_split_layout(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    colors = {"1": (220, 20, 20), "2": (20, 220, 20), "3": (20, 20, 220)}
    layout = {"forget_5": ["1"], "retain_95": ["2", "3"]}
    for config, pids in layout.items():
        (tmp_path / "src" / config).mkdir(parents=True)
        rows = [rf.mllmu_train_row(pid, rf.MLLMU_PEOPLE[pid], colors[pid]) for pid in pids]
        table = pa.Table.from_pylist(rows, schema=rf.MLLMU_TRAIN_SCHEMA)
        pq.write_table(table, tmp_path / "src" / config / "train-00000-of-00001.parquet")
    report = convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    rows = list(by_id(tmp_path / "out").values())
    assert report.totals["quarantined"] == 0 and len(rows) == 6  # 2 metadata pairs per person
    assert {r["task"] for r in rows} == {"fact_vqa"}
    assert {r["entity_id"] for r in rows if r["split"] == "forget"} == {"mllmu:1"}
    assert {r["entity_id"] for r in rows if r["split"] == "retain"} == {"mllmu:2", "mllmu:3"}
    assert rows[0]["image"] is not None
    assert_reconciled(report, tmp_path / "out")


def test_mllmu_full_set_provides_retain_when_retain_config_is_absent(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    del tables["retain_95"]
    rf.write_mllmu_bench(tmp_path / "src", tables)
    report = convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    assert {r["entity_id"] for r in rows if r["split"] == "retain"} == {"mllmu:2", "mllmu:3"}
    assert report.configs["Full_Set"].skipped_rows == 1  # person 1 is in forget_5 already
    assert_reconciled(report, tmp_path / "out")


def _corrupt_image(t: dict[str, Any]) -> None:
    t["forget_5"][0]["image"]["bytes"] = rf.CORRUPT_IMAGE


def _truncate_image(t: dict[str, Any]) -> None:
    t["forget_5"][0]["image"]["bytes"] = rf.truncated_png()


def _empty_answer(t: dict[str, Any]) -> None:
    t["forget_5"][0]["Generation_Task"][0]["Ground_Truth"] = ""


def _null_option(t: dict[str, Any]) -> None:
    t["retain_95"][0]["Classification_Task"]["Image_Textual_Questions"][0]["Options"]["D"] = None


def _answer_not_an_option(t: dict[str, Any]) -> None:
    t["retain_95"][1]["Classification_Task"]["Pure_Text_Questions"][0]["Correct_Answer"] = "E"


def _unknown_type(t: dict[str, Any]) -> None:
    t["retain_95"][1]["Mask_Task"][1]["Type"] = "Video"


def _bad_biography(t: dict[str, Any]) -> None:
    t["Retain_Set"][0]["biography"] = "{not json"


def _bad_metadata(t: dict[str, Any]) -> None:
    t["ft_Data"][2]["metadata"] = "[{]"


QUARANTINE_CASES: list[tuple[str, Callable[[dict[str, Any]], None] | None, dict[str, Any], str, int]] = [
    ("corrupt image bytes", _corrupt_image, {}, "image: cannot decode", 4),
    ("truncated PNG", _truncate_image, {}, "image: cannot decode", 4),
    (
        "missing column",
        None,
        {"drop_columns": {"retain_95": ["ID"]}},
        "ID: column missing from retain_95/train-00000-of-00001.parquet",
        2,
    ),
    ("empty answer", _empty_answer, {}, "answer: empty", 1),
    ("wrong type (null option)", _null_option, {}, "options: item 3 is null", 1),
    ("MC answer not among options", _answer_not_an_option, {}, "answer: 'E' is not among the options", 1),
    ("unknown question Type", _unknown_type, {}, "Mask_Task[1].Type: unknown 'Video'", 1),
    ("biography not JSON", _bad_biography, {}, "biography: not valid JSON", 1),
    ("training metadata not JSON", _bad_metadata, {}, "metadata: not valid JSON", 1),
    (
        "non-UTF-8 text",
        None,
        {"break_utf8": {"forget_5": ("biography", 0)}},
        "biography: not valid UTF-8 text in the source file",
        1,
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "options", "reason", "count"), QUARANTINE_CASES, ids=[c[0] for c in QUARANTINE_CASES]
)
def test_mllmu_quarantine_cases(
    tmp_path: Path,
    case: str,
    mutate: Callable[[dict[str, Any]], None] | None,
    options: dict[str, Any],
    reason: str,
    count: int,
) -> None:
    tables = rf.mllmu_tables()
    if mutate is not None:
        mutate(tables)
    rf.write_mllmu_bench(tmp_path / "src", tables, **options)
    report = convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    quarantined = records_io.read_quarantine(tmp_path / "out").to_pylist()
    assert len(quarantined) == count == report.totals["quarantined"], case
    assert all(q["reason"].startswith(reason) for q in quarantined), [q["reason"] for q in quarantined]
    assert all(q["origin"] and json.loads(q["row"]) for q in quarantined)
    assert_reconciled(report, tmp_path / "out")


def test_mllmu_quarantined_forget_row_keeps_its_person_on_the_forget_side(tmp_path: Path) -> None:
    rf.write_mllmu_bench(tmp_path / "src", break_utf8={"forget_5": ("biography", 0)})
    convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    assert {r["entity_id"] for r in rows if r["split"] in ("retain", "retain_unseen")} == {
        "mllmu:2",
        "mllmu:3",
    }
    assert {r["entity_id"] for r in rows if r["split"] == "forget_unseen"} == {"mllmu:1"}


def test_mllmu_duplicate_ids_are_an_error(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    tables["forget_5"].append(copy.deepcopy(tables["forget_5"][0]))
    rf.write_mllmu_bench(tmp_path / "src", tables)
    with pytest.raises(RecordError) as err:
        convert("mllmu-bench", tmp_path / "src", tmp_path / "out")
    message = str(err.value)
    assert "duplicate sample_id" in message and "'mllmu:forget_5:1:mc_vqa:00'" in message
    assert (
        "forget_5/train-00000-of-00001.parquet#0" in message
        and "forget_5/train-00000-of-00001.parquet#1" in message
    )
    assert not (tmp_path / "out").exists()  # nothing written


def test_mllmu_forget_retain_overlap_is_an_error_naming_the_person(tmp_path: Path) -> None:
    tables = rf.mllmu_tables()
    tables["retain_95"].append(copy.deepcopy(tables["forget_5"][0]))
    rf.write_mllmu_bench(tmp_path / "src", tables)
    with pytest.raises(RecordError, match=r"'mllmu:1' in forget .* retain .*meaningless"):
        convert("mllmu-bench", tmp_path / "src", tmp_path / "out")


def test_identical_source_gives_identical_bytes(tmp_path: Path) -> None:
    rf.write_mllmu_bench(tmp_path / "src")
    convert("mllmu-bench", tmp_path / "src", tmp_path / "a")
    convert("mllmu-bench", tmp_path / "src", tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "forget.parquet" in names and "quarantine.parquet" in names and "records_meta.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# ----------------------------------------------------------------------------------------- CLEAR


def test_clear_configs_land_in_the_right_task_and_split(tmp_path: Path) -> None:
    rf.write_clear(tmp_path / "src")
    report = convert("clear", tmp_path / "src", tmp_path / "out")
    rows = list(by_id(tmp_path / "out").values())

    def pick(split: str, task: str) -> list[dict[str, Any]]:
        return [r for r in rows if r["split"] == split and r["task"] == task]

    captions = pick("forget", "caption")
    assert {r["entity_id"] for r in captions} == {"clear:Ann Smith"} and len(captions) == 2
    assert all(r["image"] and r["answer"].startswith("A person in a blue coat") for r in captions)
    assert {r["entity_id"] for r in pick("retain", "caption")} == {"clear:Bob Jones", "clear:Cat Lee"}
    (mc,) = pick("forget", "mc_vqa")
    assert mc["answer"] == "Ann Smith" and mc["options"] == ["Ann Smith", "Xia Sol", "Yul Ray", "Zed Quinn"]
    assert pick("retain", "mc_vqa")[0]["answer"] == "Bob Jones"
    tofu = pick("forget", "text_qa")
    assert {r["entity_id"] for r in tofu} == {"clear:Ann Smith", "clear:tofu-unmatched:forget"}
    assert all(r["image"] is None for r in tofu)
    assert {r["entity_id"] for r in pick("retain", "text_qa")} == {"clear:Bob Jones", "clear:Cat Lee"}
    faces, world = sorted(pick("utility", "mc_vqa"), key=lambda r: r["source"])
    assert faces["options"] == ["Famous Person", "Other One", "Other Three", "Other Two"]
    assert faces["entity_id"] == "clear-real:Famous Person"
    assert world["options"] == ["red", "green", "blue", "black"] and world["answer"] == "green"
    assert report.configs["forget10+tofu"].skipped_rows == 2  # caption duplicates of forget10
    assert set(report.skipped_configs) == {"forget01", "full"}
    assert any("'notes'" in w for w in report.warnings) and any(
        "tofu-unmatched" in w for w in report.warnings
    )
    assert_reconciled(report, tmp_path / "out")


def test_clear_perturbed_rows_keep_paraphrased_and_perturbed_captions(tmp_path: Path) -> None:
    rf.write_clear(tmp_path / "src")
    convert("clear", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    (mc,) = [r for r in rows if r["split"] == "forget" and r["task"] == "mc_vqa"]
    variants = json.loads(mc["answer_variants"])
    assert variants["paraphrased"] == "Someone in a blue coat is near a window."
    assert variants["perturbed"] == ["A dog on a sofa.", "A red car."]
    assert variants["caption"].startswith("A person in a blue coat")
    captions = [r for r in rows if r["task"] == "caption"]
    assert captions and all(json.loads(r["answer_variants"]) == {} for r in captions)


def test_clear_lone_forget_config_is_used_and_several_are_listed(tmp_path: Path) -> None:
    tables = rf.clear_tables()
    for name in ("forget10", "forget10+tofu", "forget10_perturbed"):
        del tables[name]
    rf.write_clear(tmp_path / "src", tables)
    convert("clear", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    assert {r["source"] for r in rows if r["split"] == "forget"} == {"clear:forget01"}
    tables["forget05"] = tables["forget01"]
    rf.write_clear(tmp_path / "src2", tables)
    with pytest.raises(RecordError, match=r"'forget10' .* available: forget01, forget05"):
        convert("clear", tmp_path / "src2", tmp_path / "out2")


def test_clear_tofu_captions_are_used_without_the_plain_config(tmp_path: Path) -> None:
    tables = rf.clear_tables()
    del tables["forget10"]
    tables["forget10+tofu"][0]["caption"] = "Ann Smith waves at the camera."
    rf.write_clear(tmp_path / "src", tables)
    report = convert("clear", tmp_path / "src", tmp_path / "out")
    rows = by_id(tmp_path / "out").values()
    assert [r["entity_id"] for r in rows if r["task"] == "caption" and r["split"] == "forget"] == [
        "clear:Ann Smith"
    ]
    (entry,) = records_io.read_quarantine(tmp_path / "out").to_pylist()  # the caption naming nobody
    assert entry["reason"].startswith("name: +tofu caption rows carry no name column")
    assert_reconciled(report, tmp_path / "out")


def test_clear_missing_name_column_is_quarantined(tmp_path: Path) -> None:
    rf.write_clear(tmp_path / "src", drop_columns={"retain90": ["name"]})
    report = convert("clear", tmp_path / "src", tmp_path / "out")
    reasons = [q["reason"] for q in records_io.read_quarantine(tmp_path / "out").to_pylist()]
    assert reasons == ["name: column missing from retain90/train-00000-of-00001.parquet"] * 2
    assert_reconciled(report, tmp_path / "out")


def test_clear_overlap_is_an_error(tmp_path: Path) -> None:
    tables = rf.clear_tables()
    tables["retain90"].append(tables["forget10"][0])
    rf.write_clear(tmp_path / "src", tables)
    with pytest.raises(RecordError, match=r"'clear:Ann Smith' in forget .*meaningless"):
        convert("clear", tmp_path / "src", tmp_path / "out")


def test_clear_other_forget_percentage(tmp_path: Path) -> None:
    rf.write_clear(tmp_path / "src")
    report = convert("clear", tmp_path / "src", tmp_path / "out", forget_config="forget01")
    rows = by_id(tmp_path / "out").values()
    assert [r["task"] for r in rows if r["split"] == "forget"] == ["caption"]
    assert any("retain99 not found" in w for w in report.warnings)
    assert "forget10" in report.skipped_configs and "forget10+tofu" in report.skipped_configs
    with pytest.raises(RecordError, match=r"'forget05' .* available: forget01, forget10"):
        convert("clear", tmp_path / "src", tmp_path / "out2", forget_config="forget05")


# ----------------------------------------------------------------------------------------- jsonl


def test_jsonl_folder_round_trip_and_bad_lines(tmp_path: Path) -> None:
    records = rf.jsonl_records()
    records[0]["extra_note"] = "ignored"
    records += [
        dict(records[1], sample_id="j-4", image="img/missing.png", task="identity_vqa"),
        dict(records[1], sample_id="j-5", image="../outside.png", task="identity_vqa"),
        dict(records[1], sample_id="j-6", question=7),
    ]
    src = rf.write_jsonl_folder(
        tmp_path / "src", records, extra_lines=[b"{broken", b'"just a string"', b"\xff\xfe"]
    )
    report = convert("jsonl", src, tmp_path / "out")
    rows = by_id(tmp_path / "out")
    assert set(rows) == {"j-1", "j-2", "j-3"}
    assert rows["j-1"]["image"] == (src / "img" / "p1.png").read_bytes()
    assert json.loads(rows["j-2"]["private_facts"]) == {"name": "Pat One"}
    assert rows["j-3"]["options"] == ["a cup", "a pen"] and rows["j-3"]["source"] == "jsonl:src"
    reasons = sorted(
        q["reason"].split(" (")[0] for q in records_io.read_quarantine(tmp_path / "out").to_pylist()
    )
    assert reasons == [
        "image: file 'img/missing.png' not found in " + str(src),
        "image: path '../outside.png' leaves the folder " + str(src),
        "line: expected a JSON object, got str",
        "line: not valid JSON",
        "line: not valid UTF-8",
        "question: expected str, got int",
    ]
    assert any("extra_note" in w for w in report.warnings)
    assert_reconciled(report, tmp_path / "out")


def test_jsonl_source_may_be_the_file_itself(tmp_path: Path) -> None:
    src = rf.write_jsonl_folder(tmp_path / "src")
    report = convert("jsonl", src / "records.jsonl", tmp_path / "out")
    assert report.totals == {"read": 3, "written": 3, "quarantined": 0}
    with pytest.raises(RecordError, match="no forget_config"):
        convert("jsonl", src, tmp_path / "out2", forget_config="forget_5")


# -------------------------------------------------------------------------------------- registry


def test_unknown_format_is_an_error_listing_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownFormatError, match="unknown format 'tofu'; valid formats: clear, jsonl, mllmu-bench"
    ):
        convert("tofu", tmp_path, tmp_path / "out")
    assert format_names() == ("clear", "jsonl", "mllmu-bench")
    assert all(callable(get_converter(name)) for name in format_names())


def test_source_without_configs_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no config folders with parquet files"):
        convert("mllmu-bench", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(RecordError, match="is not a folder"):
        convert("clear", tmp_path / "absent", tmp_path / "out")


def test_single_config_folder_is_accepted(tmp_path: Path) -> None:
    rf.write_mllmu_bench(tmp_path / "src", unknown_folder=False)
    shutil.copytree(tmp_path / "src" / "Retain_Set", tmp_path / "Retain_Set")
    report = convert("mllmu-bench", tmp_path / "Retain_Set", tmp_path / "out")
    assert report.records["splits"]["utility"]["total"] == sum(rf.RECORDS_PER_PROFILE.values())
