"""Tiny datasets written in the exact published on-disk schemas, for the adapter tests.

MLLMU-Bench (HF ``MLLMMU/MLLMU-Bench``) and CLEAR (HF ``therem/CLEAR``) are laid out as the hub
stores them: one folder per config holding ``train-0000i-of-0000n.parquet`` files, images in the
hub's Image struct {bytes, path}, nested structs and lists as in the dataset cards. Images are real
small PNGs made with Pillow. Tests take the row dicts (``mllmu_tables`` / ``clear_tables``), break
what they need, then write them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MC_ITEM = pa.struct(
    [
        ("Correct_Answer", pa.string()),
        ("Options", pa.struct([(k, pa.string()) for k in "ABCD"])),
        ("Question", pa.string()),
    ]
)
QA_ITEM = pa.struct([("Ground_Truth", pa.string()), ("Question", pa.string()), ("Type", pa.string())])
CLASSIFICATION = pa.struct(
    [("Image_Textual_Questions", pa.list_(MC_ITEM)), ("Pure_Text_Questions", pa.list_(MC_ITEM))]
)
_PROFILE_TAIL = [
    ("biography", pa.string()),
    ("question", pa.string()),
    ("answer", pa.string()),
    ("Classification_Task", CLASSIFICATION),
    ("Generation_Task", pa.list_(QA_ITEM)),
    ("Mask_Task", pa.list_(QA_ITEM)),
]
MLLMU_PROFILE_SCHEMA = pa.schema([("image", HF_IMAGE), ("ID", pa.string()), *_PROFILE_TAIL])
MLLMU_FULL_SCHEMA = pa.schema(
    [("image", HF_IMAGE), ("ID", pa.string()), ("Directory", pa.string()), *_PROFILE_TAIL]
)
MLLMU_TEST_SCHEMA = pa.schema([("images", pa.list_(HF_IMAGE)), ("ID", pa.string()), *_PROFILE_TAIL])
MLLMU_TRAIN_SCHEMA = pa.schema([("image", HF_IMAGE), ("ID", pa.string()), ("metadata", pa.string())])

CLEAR_CAPTION_SCHEMA = pa.schema([("image", HF_IMAGE), ("caption", pa.string()), ("name", pa.string())])
CLEAR_TOFU_SCHEMA = pa.schema(
    [("image", HF_IMAGE), ("caption", pa.string()), ("question", pa.string()), ("answer", pa.string())]
)
CLEAR_PERTURBED_SCHEMA = pa.schema(
    [
        ("image", HF_IMAGE),
        ("caption", pa.string()),
        ("name", pa.string()),
        ("perturbed_captions", pa.list_(pa.string())),
        ("paraphrased_caption", pa.string()),
        ("perturbed_names", pa.list_(pa.string())),
    ]
)
CLEAR_REAL_FACES_SCHEMA = pa.schema(
    [("image", HF_IMAGE), ("answer", pa.string()), ("options", pa.list_(pa.string()))]
)
CLEAR_REAL_WORLD_SCHEMA = pa.schema(
    [
        ("question", pa.string()),
        ("answer", pa.string()),
        ("options", pa.list_(pa.string())),
        ("image", HF_IMAGE),
    ]
)

CORRUPT_IMAGE = b"definitely not an image"


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    """A PNG cut off inside its image data: the header parses, decoding fails."""
    image = Image.effect_noise((64, 64), 60).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def hf_image(data: bytes | None, path: str) -> dict[str, Any]:
    return {"bytes": data, "path": path}


# ----------------------------------------------------------------------------------- MLLMU-Bench

MLLMU_PEOPLE = {"1": "Ada Quill", "2": "Bo Renner", "3": "Cyd Marsh"}  # "1" is the forget person
MLLMU_CELEBRITY = ("1", "Dee Famous")  # Retain_Set reuses ID "1": entities must not collide
RECORDS_PER_PROFILE = {"open_vqa": 1, "mc_vqa": 1, "mc_text": 1, "generation": 2, "cloze": 2}


def mllmu_profile(pid: str, name: str, color: tuple[int, int, int]) -> dict[str, Any]:
    occupation = f"lawyer-{pid}"
    return {
        "image": hf_image(png_bytes(color), f"{pid}.png"),
        "ID": pid,
        "biography": json.dumps({"Name": name, "Occupation": occupation, "Birthplace": f"Town {pid}"}),
        "question": "Tell me about the person in the image.",
        "answer": f"This is {name}, a {occupation} born in Town {pid}.",
        "Classification_Task": {
            "Image_Textual_Questions": [
                {
                    "Correct_Answer": "B",
                    "Options": {"A": "painter", "B": occupation, "C": "pilot", "D": "chef"},
                    "Question": "What is the occupation of the person in the image?",
                }
            ],
            "Pure_Text_Questions": [
                {
                    "Correct_Answer": "C",
                    "Options": {"A": "Town X", "B": "Town Y", "C": f"Town {pid}", "D": "Town Z"},
                    "Question": f"Where was {name} born?",
                }
            ],
        },
        "Generation_Task": [
            {
                "Ground_Truth": f"A {occupation}.",
                "Question": "What does this person do?",
                "Type": "Image_Textual",
            },
            {"Ground_Truth": f"Town {pid}.", "Question": f"Where is {name} from?", "Type": "Pure_Text"},
        ],
        "Mask_Task": [
            {
                "Ground_Truth": occupation,
                "Question": "The person in the image works as a __.",
                "Type": "Image_Textual",
            },
            {"Ground_Truth": f"Town {pid}", "Question": f"{name} was born in __.", "Type": "Pure_Text"},
        ],
    }


def mllmu_test_profile(pid: str, name: str, colors: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
    row = mllmu_profile(pid, name, colors[0])
    del row["image"]
    row["images"] = [hf_image(png_bytes(c), f"{pid}_pose{i}.png") for i, c in enumerate(colors)]
    return row


def mllmu_train_row(pid: str, name: str, color: tuple[int, int, int]) -> dict[str, Any]:
    pairs = [
        {"Question": "What is the name of the person in the image?", "Answer": name},
        {"Question": "What does this person do for a living?", "Answer": f"{name} is a lawyer-{pid}."},
    ]
    return {"image": hf_image(png_bytes(color), f"{pid}.png"), "ID": pid, "metadata": json.dumps(pairs)}


def mllmu_tables() -> dict[str, list[dict[str, Any]]]:
    """Config -> rows. forget_5 = person 1, retain_95 = persons 2 and 3 (forget_10/retain_90 differ)."""
    colors = {"1": (220, 20, 20), "2": (20, 220, 20), "3": (20, 20, 220)}
    profile = {pid: mllmu_profile(pid, name, colors[pid]) for pid, name in MLLMU_PEOPLE.items()}
    full = [{**profile[pid], "Directory": f"images/{pid}.png"} for pid in MLLMU_PEOPLE]
    test = [
        mllmu_test_profile(pid, name, [(pid_n * 60, 90, 90), (90, pid_n * 60, 90)])
        for pid_n, (pid, name) in enumerate(MLLMU_PEOPLE.items(), start=1)
    ]
    return {
        "forget_5": [profile["1"]],
        "retain_95": [profile["2"], profile["3"]],
        "forget_10": [profile["1"], profile["2"]],
        "retain_90": [profile["3"]],
        "Full_Set": full,
        "Test_Set": test,
        "Retain_Set": [mllmu_profile(MLLMU_CELEBRITY[0], MLLMU_CELEBRITY[1], (128, 128, 0))],
        "ft_Data": [mllmu_train_row(pid, name, colors[pid]) for pid, name in MLLMU_PEOPLE.items()],
    }


def mllmu_schema(config: str) -> pa.Schema:
    if config == "Test_Set":
        return MLLMU_TEST_SCHEMA
    if config == "Full_Set":
        return MLLMU_FULL_SCHEMA
    if config == "ft_Data":
        return MLLMU_TRAIN_SCHEMA
    return MLLMU_PROFILE_SCHEMA


def write_mllmu_bench(
    root: Path,
    tables: Mapping[str, list[dict[str, Any]]] | None = None,
    *,
    drop_columns: Mapping[str, Sequence[str]] | None = None,
    break_utf8: Mapping[str, tuple[str, int]] | None = None,
    unknown_folder: bool = True,
) -> Path:
    """Write the MLLMU-Bench layout under ``root``; Test_Set is split over two files like the hub's."""
    tables = mllmu_tables() if tables is None else tables
    for config, rows in tables.items():
        table = pa.Table.from_pylist(rows, schema=mllmu_schema(config))
        table = _finish(table, config, drop_columns, break_utf8)
        parts = (
            [table.slice(0, 2), table.slice(2)] if config == "Test_Set" and table.num_rows > 2 else [table]
        )
        _write_parts(root / config, parts)
    if unknown_folder:
        _write_parts(root / "extras", [pa.table({"note": ["not a config"]})])
    return root


# ----------------------------------------------------------------------------------------- CLEAR

CLEAR_FORGET = "Ann Smith"
CLEAR_RETAIN = ("Bob Jones", "Cat Lee")


def _caption(name: str, i: int) -> dict[str, Any]:
    return {
        "image": hf_image(png_bytes((40 * i % 255, 100, 150)), f"{name}_{i}.png"),
        "caption": f"A person in a blue coat stands by a window ({i}).",
        "name": name,
    }


def _perturbed(name: str, i: int) -> dict[str, Any]:
    return {
        **_caption(name, i),
        "perturbed_captions": ["A dog on a sofa.", "A red car."],
        "paraphrased_caption": "Someone in a blue coat is near a window.",
        "perturbed_names": ["Zed Quinn", "Yul Ray", "Xia Sol"],
    }


def _tofu(question: str, answer: str) -> dict[str, Any]:
    return {"image": None, "caption": None, "question": question, "answer": answer}


def clear_tables() -> dict[str, list[dict[str, Any]]]:
    """Config -> rows. forget10 = Ann Smith (2 photos); retain90 = Bob Jones and Cat Lee."""
    forget = [_caption(CLEAR_FORGET, 1), _caption(CLEAR_FORGET, 2)]
    retain = [_caption(CLEAR_RETAIN[0], 3), _caption(CLEAR_RETAIN[1], 4)]
    strip = [{k: v for k, v in r.items() if k != "name"} | {"question": None, "answer": None} for r in forget]
    strip_retain = [
        {k: v for k, v in r.items() if k != "name"} | {"question": None, "answer": None} for r in retain
    ]
    return {
        "forget10": forget,
        "retain90": retain,
        "forget10+tofu": strip
        + [
            _tofu(f"What genre does {CLEAR_FORGET} write?", "Mystery novels."),
            _tofu("Which award did the author win in 2001?", "The Silver Quill."),  # names no one
        ],
        "retain90+tofu": strip_retain
        + [
            _tofu(f"Where was {CLEAR_RETAIN[0]} born?", "In Oslo."),
            _tofu(f"What is {CLEAR_RETAIN[1]}'s first book?", "Night Rain."),
        ],
        "forget10_perturbed": [_perturbed(CLEAR_FORGET, 1)],
        "retain_perturbed": [_perturbed(CLEAR_RETAIN[0], 3)],
        "real_faces": [
            {
                "image": hf_image(png_bytes((10, 10, 10)), "face.png"),
                "answer": "Famous Person",
                "options": ["Other One", "Other Two", "Other Three"],
            }
        ],
        "real_world": [
            {
                "question": "What color is the square?",
                "answer": "green",
                "options": ["red", "green", "blue", "black"],
                "image": hf_image(png_bytes((0, 200, 0)), "square.png"),
            }
        ],
        "forget01": [forget[0]],
        "full": forget + retain,
    }


def clear_schema(config: str) -> pa.Schema:
    if config.endswith("+tofu"):
        return CLEAR_TOFU_SCHEMA
    if config.endswith("_perturbed"):
        return CLEAR_PERTURBED_SCHEMA
    return {"real_faces": CLEAR_REAL_FACES_SCHEMA, "real_world": CLEAR_REAL_WORLD_SCHEMA}.get(
        config, CLEAR_CAPTION_SCHEMA
    )


def write_clear(
    root: Path,
    tables: Mapping[str, list[dict[str, Any]]] | None = None,
    *,
    drop_columns: Mapping[str, Sequence[str]] | None = None,
    unknown_folder: bool = True,
) -> Path:
    tables = clear_tables() if tables is None else tables
    for config, rows in tables.items():
        table = _finish(pa.Table.from_pylist(rows, schema=clear_schema(config)), config, drop_columns, None)
        _write_parts(root / config, [table])
    if unknown_folder:
        _write_parts(root / "notes", [pa.table({"text": ["hello"]})])
    return root


# ----------------------------------------------------------------------------------------- jsonl


def jsonl_records() -> list[dict[str, Any]]:
    return [
        {
            "sample_id": "j-1",
            "entity_id": "p1",
            "split": "forget",
            "task": "identity_vqa",
            "image": "img/p1.png",
            "question": "Who is this person?",
            "answer": "Pat One",
            "private_facts": {"name": "Pat One"},
            "visible_attributes": {"shirt": "red"},
        },
        {
            "sample_id": "j-2",
            "entity_id": "p1",
            "split": "forget",
            "task": "text_qa",
            "image": None,
            "question": "Where does Pat One live?",
            "answer": "Lyon",
            "private_facts": '{"name": "Pat One"}',
        },
        {
            "sample_id": "j-3",
            "entity_id": "p2",
            "split": "retain",
            "task": "mc_vqa",
            "image": "img/p2.png",
            "question": "What does this person hold?",
            "answer": "a cup",
            "options": ["a cup", "a pen"],
        },
    ]


def write_jsonl_folder(
    root: Path, records: Sequence[Mapping[str, Any]] | None = None, *, extra_lines: Sequence[bytes] = ()
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "img").mkdir(exist_ok=True)
    (root / "img" / "p1.png").write_bytes(png_bytes((255, 0, 0)))
    (root / "img" / "p2.png").write_bytes(png_bytes((0, 0, 255)))
    lines = [json.dumps(r).encode("utf-8") for r in (jsonl_records() if records is None else records)]
    (root / "records.jsonl").write_bytes(b"\n".join([*lines, *extra_lines]) + b"\n")
    return root


# ------------------------------------------------------------------------------------- internals


def with_invalid_utf8(table: pa.Table, column: str, row: int) -> pa.Table:
    """Replace one cell of a string column by bytes that are not UTF-8 (Arrow does not check)."""
    values = [v.encode("utf-8") for v in table.column(column).to_pylist()]
    values[row] = b"caf\xe9 \xff\xfe"
    offsets = [0]
    for value in values:
        offsets.append(offsets[-1] + len(value))
    array = pa.Array.from_buffers(
        pa.string(),
        len(values),
        [None, pa.array(offsets, type=pa.int32()).buffers()[1], pa.py_buffer(b"".join(values))],
    )
    return table.set_column(table.schema.get_field_index(column), column, array)


def _finish(
    table: pa.Table,
    config: str,
    drop_columns: Mapping[str, Sequence[str]] | None,
    break_utf8: Mapping[str, tuple[str, int]] | None,
) -> pa.Table:
    if break_utf8 and config in break_utf8:
        table = with_invalid_utf8(table, *break_utf8[config])
    if drop_columns and config in drop_columns:
        table = table.drop_columns(list(drop_columns[config]))
    return table


def _write_parts(folder: Path, parts: Sequence[pa.Table]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        pq.write_table(part, folder / f"train-{i:05d}-of-{len(parts):05d}.parquet")
