"""Plain folders: ``records.jsonl`` (one canonical record per line) + image files -> records.

Each line is a JSON object with the canonical fields (``sample_id``, ``entity_id``, ``split``,
``task``, ``question``, ``answer``, optional ``options``, ``private_facts`` and
``visible_attributes`` as objects or JSON text, ``source``). ``image`` is a path relative to the
folder (it may not leave the folder) or null. Blank lines are ignored; a line that is not UTF-8, not
JSON or not an object, too long or nested too deep (``unlearn_core.bounded``), and a record whose
image file is missing, is quarantined. Fields outside the canonical schema are ignored (named in a
warning). ``source`` defaults to ``jsonl:<folder name>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unlearn_core.bounded import iter_lines, line_too_long, load_json_text
from unlearn_core.data.adapters import Conversion, ConvertReport
from unlearn_core.data.schema import COLUMNS, RecordError

FORMAT = "jsonl"
RECORDS_FILE = "records.jsonl"


def convert(source: Path, out: Path, *, forget_config: str | None = None) -> ConvertReport:
    """Convert a folder holding ``records.jsonl`` (or the file itself) into a records folder."""
    if forget_config is not None:
        raise RecordError("the jsonl format takes no forget_config: every record names its own split")
    source = Path(source)
    folder = source.parent if source.is_file() else source
    path = source if source.is_file() else source / RECORDS_FILE
    if not path.is_file():
        raise RecordError(
            f"{path} not found: a jsonl source is a folder holding {RECORDS_FILE} and its images"
        )
    conv = Conversion(FORMAT, folder, Path(out))
    counts = conv.config(path.name, "per record")
    extra: set[str] = set()
    with path.open("rb") as handle:
        for number, raw, size in iter_lines(handle):
            if raw is not None and not raw.strip():
                continue
            counts.source_rows += 1
            origin = f"{path.name}#{number}"
            if raw is None:
                conv.reject(origin, line_too_long(size), {"line": f"<{size} bytes, not kept>"})
                continue
            record, reason = _parse_line(raw, folder)
            if record is None:
                conv.reject(origin, reason or "line: unusable", {"line": raw.decode("utf-8", "replace")})
                continue
            extra |= set(record) - set(COLUMNS)
            if reason is not None:
                conv.reject(origin, reason, record)
                continue
            if record.get("source") is None:
                record["source"] = f"{FORMAT}:{folder.name}"
            conv.add(origin, {c: record.get(c) for c in COLUMNS})
    if extra:
        conv.warn(f"{path.name}: fields outside the canonical schema ignored: {', '.join(sorted(extra))}")
    return conv.finish(f"{FORMAT}:{folder.name}")


def _parse_line(raw: bytes, folder: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record with image bytes loaded, None) or (record or None, the reason it is rejected)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"line: not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        record = load_json_text(text)
    except json.JSONDecodeError as exc:
        return None, f"line: not valid JSON ({exc.msg} at column {exc.colno})"
    except ValueError as exc:  # too deep, too long, a number Python cannot read
        return None, f"line: {exc}"
    if not isinstance(record, dict):
        return None, f"line: expected a JSON object, got {type(record).__name__}"
    image = record.get("image")
    if not isinstance(image, str):
        return record, None  # null, or a wrong type that validation will name
    path = (folder / image).resolve()
    if Path(image).is_absolute() or not path.is_relative_to(folder.resolve()):
        return record, f"image: path {image!r} leaves the folder {folder}"
    if not path.is_file():
        return record, f"image: file {image!r} not found in {folder}"
    record["image"] = path.read_bytes()
    return record, None
