"""Read and write a records folder: the canonical records of one dataset, split by split.

Layout of a records folder::

    forget.parquet, retain.parquet, ...   one file per non-empty split, in ``schema.ARROW_SCHEMA``
    records_meta.json                      counts per split and task, source, schema version
    quarantine.parquet                     rejected input rows: ``origin``, ``reason``, ``row`` (JSON)

Writing is deterministic: rows are sorted by ``sample_id`` within a split and written in fixed-size
row groups with fixed Parquet options, and the metadata holds no timestamps, so identical inputs
give identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unlearn_core.data.schema import (
    ARROW_SCHEMA,
    COLUMNS,
    LATER_COLUMNS,
    SPLITS,
    Record,
    RecordError,
    rows_to_table,
)

RECORDS_SCHEMA_VERSION = 1
META_FILE = "records_meta.json"
QUARANTINE_FILE = "quarantine.parquet"
ROW_GROUP_ROWS = 256

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("origin", pa.string(), nullable=False),  # "<config>/<file>#<row>" or "<file>#<line>"
        pa.field("reason", pa.string(), nullable=False),  # "<field>: <what is wrong>"
        pa.field("row", pa.string(), nullable=False),  # the rejected input row as JSON text
    ]
)

# Encoded images are already compressed: zstd on them costs time and saves nothing. Records of one
# person sit next to each other (sorted by sample_id) and share the image bytes, so the image column
# is dictionary-encoded with a large dictionary page: repeated images are stored once per row group.
_TEXT_COMPRESSION = "zstd"
_WRITER_OPTIONS: dict[str, Any] = {
    "version": "2.6",
    "compression": {name: ("none" if name == "image" else _TEXT_COMPRESSION) for name in COLUMNS},
    "compression_level": None,
    "use_dictionary": True,
    "dictionary_pagesize_limit": 64 * 1024 * 1024,
    "write_statistics": True,
    "data_page_version": "1.0",
    "store_schema": True,
}
_JSON_COLUMNS = ("private_facts", "visible_attributes", "answer_variants")


def split_path(records_dir: Path | str, split: str) -> Path:
    return Path(records_dir) / f"{split}.parquet"


def write_records(
    rows_or_records: Iterable[Record | Mapping[str, Any]],
    out_dir: Path | str,
    *,
    source: str,
    quarantine: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Write canonical rows (or ``Record`` objects) as a records folder; return the counts.

    The rows must already be valid (see ``validate.validate_rows``); a row Arrow cannot store, an
    unknown split or a repeated ``sample_id`` raises ``RecordError``. ``out_dir`` is new, empty or an
    earlier records folder (its ``records_meta.json``), whose split files left over are removed; any
    other non-empty folder is refused (the CLI writes into a new staging folder, ``unlearn_core.outputs``).
    """
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise RecordError(
            f"{out}: not empty and not a records folder (no {META_FILE}); write into a new folder"
        )
    by_split = _group_by_split(_coerce_row(r) for r in rows_or_records)
    _check_unique(by_split)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        path = split_path(out, split)
        if split in by_split:
            _write_split(by_split[split], path, split)
        elif path.exists():
            path.unlink()
    _write_quarantine(quarantine, out / QUARANTINE_FILE)
    counts = _counts(by_split, len(quarantine))
    meta = {
        "schema_version": RECORDS_SCHEMA_VERSION,
        "source": source,
        "columns": list(COLUMNS),
        "files": {split: split_path(out, split).name for split in SPLITS if split in by_split},
        "counts": counts,
    }
    _atomic_write_text(out / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return counts


def read_meta(records_dir: Path | str) -> dict[str, Any]:
    path = Path(records_dir) / META_FILE
    if not Path(records_dir).is_dir():
        raise RecordError(f"records folder {records_dir} does not exist")
    if not path.is_file():
        raise RecordError(
            f"{path} is missing: {records_dir} is not a records folder (write it with write_records)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("counts"), dict):
        raise RecordError(f"{path} has no 'counts' object")
    return meta


def read_records(records_dir: Path | str, splits: Sequence[str] | None = None) -> pa.Table:
    """All rows of the given splits (default: every split) as one table in ``ARROW_SCHEMA``."""
    tables = [_read_split(records_dir, split) for split in _resolve_splits(records_dir, splits)]
    if not tables:
        return ARROW_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def iter_rows(
    records_dir: Path | str, splits: Sequence[str] | None = None, *, batch_size: int = ROW_GROUP_ROWS
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield ``(split, row_index, row)`` one batch at a time, without loading whole files."""
    for split in _resolve_splits(records_dir, splits):
        path = split_path(records_dir, split)
        if not path.exists():
            continue
        pfile = _open_checked(path)
        index = 0
        for batch in pfile.iter_batches(batch_size=batch_size, columns=_present_columns(path)):
            for row in batch.to_pylist():
                yield split, index, {c: row.get(c) for c in COLUMNS}
                index += 1


def iter_records(
    records_dir: Path | str, splits: Sequence[str] | None = None, *, batch_size: int = ROW_GROUP_ROWS
) -> Iterator[Record]:
    for _split, _index, row in iter_rows(records_dir, splits, batch_size=batch_size):
        yield Record.from_row(row)


def read_quarantine(records_dir: Path | str) -> pa.Table:
    path = Path(records_dir) / QUARANTINE_FILE
    if not path.is_file():
        raise RecordError(f"{path} is missing")
    table = pq.read_table(path)
    problems = schema_problems(table.schema, str(path), QUARANTINE_SCHEMA)
    if problems:
        raise RecordError("; ".join(problems))
    return table


def schema_problems(schema: pa.Schema, where: str, expected: pa.Schema = ARROW_SCHEMA) -> list[str]:
    """What is wrong with ``schema`` compared with ``expected``: missing columns and wrong types."""
    problems = []
    for field in expected:
        index = schema.get_field_index(field.name)
        if index < 0 and field.name in LATER_COLUMNS:
            continue  # written before the column existed: read as null
        if index < 0:
            problems.append(f"{where}: missing column '{field.name}'")
        elif not schema.field(index).type.equals(field.type):
            problems.append(
                f"{where}: column '{field.name}' has type {schema.field(index).type}, expected {field.type}"
            )
    return problems


def row_to_json(row: Mapping[str, Any]) -> str:
    """JSON text of an input row for the quarantine file; bytes become a short summary."""
    return json.dumps(_jsonable(row), sort_keys=True, ensure_ascii=True)


# --------------------------------------------------------------------------------------- internals


def _coerce_row(item: Record | Mapping[str, Any]) -> dict[str, Any]:
    row = item.to_row() if isinstance(item, Record) else {c: item.get(c) for c in COLUMNS}
    for name in _JSON_COLUMNS:
        value = row.get(name)
        if value is None or isinstance(value, dict):
            row[name] = json.dumps(value or {}, sort_keys=True, ensure_ascii=False)
    if row.get("source") is None:
        row["source"] = ""
    return row


def _group_by_split(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_split: dict[str, list[dict[str, Any]]] = {}
    bad: list[str] = []
    for row in rows:
        split = row.get("split")
        if split not in SPLITS:
            bad.append(f"{row.get('sample_id')!r} (split {split!r})")
            continue
        by_split.setdefault(split, []).append(row)
    if bad:
        raise RecordError(
            f"cannot write rows with an unknown split (valid: {', '.join(SPLITS)}): {_cap(bad)}"
        )
    for rows_of_split in by_split.values():
        rows_of_split.sort(key=lambda r: str(r.get("sample_id")))
    return by_split


def _check_unique(by_split: Mapping[str, list[dict[str, Any]]]) -> None:
    seen: dict[str, int] = {}
    for rows in by_split.values():
        for row in rows:
            key = str(row.get("sample_id"))
            seen[key] = seen.get(key, 0) + 1
    dups = sorted(k for k, n in seen.items() if n > 1)
    if dups:
        raise RecordError(f"cannot write duplicate sample_id(s): {_cap(dups)}")


def _write_split(rows: list[dict[str, Any]], path: Path, split: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with pq.ParquetWriter(tmp, ARROW_SCHEMA, **_WRITER_OPTIONS) as writer:
            for start in range(0, len(rows), ROW_GROUP_ROWS):
                chunk = rows[start : start + ROW_GROUP_ROWS]
                try:
                    table = rows_to_table(chunk)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                    ids = [str(r.get("sample_id")) for r in chunk]
                    raise RecordError(
                        f"{path.name}: rows {ids[0]}..{ids[-1]} do not fit the canonical schema ({exc}); "
                        "run them through validate_rows first"
                    ) from exc
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_quarantine(entries: Sequence[Mapping[str, Any]], path: Path) -> None:
    rows = []
    for entry in entries:
        row = entry.get("row")
        text = (
            row if isinstance(row, str) else row_to_json(row if isinstance(row, Mapping) else {"value": row})
        )
        rows.append(
            {"origin": str(entry.get("origin", "")), "reason": str(entry.get("reason", "")), "row": text}
        )
    rows.sort(key=lambda r: (r["origin"], r["reason"], r["row"]))
    table = pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", version="2.6", store_schema=True)
    os.replace(tmp, path)


def _counts(by_split: Mapping[str, list[dict[str, Any]]], quarantined: int) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split in SPLITS:
        rows = by_split.get(split, [])
        if not rows:
            continue
        tasks: dict[str, int] = {}
        for row in rows:
            tasks[row["task"]] = tasks.get(row["task"], 0) + 1
        splits[split] = {"total": len(rows), "tasks": dict(sorted(tasks.items()))}
    total = sum(s["total"] for s in splits.values())
    return {"total": total, "quarantined": quarantined, "splits": splits}


def _resolve_splits(records_dir: Path | str, splits: Sequence[str] | None) -> list[str]:
    meta = read_meta(records_dir)
    present = [s for s in SPLITS if s in meta["counts"].get("splits", {})]
    if splits is None:
        return present
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise RecordError(f"unknown split(s) {unknown}; valid: {', '.join(SPLITS)}")
    return list(splits)


def _open_checked(path: Path) -> pq.ParquetFile:
    try:
        pfile = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RecordError(f"{path}: not a readable Parquet file ({exc})") from exc
    problems = schema_problems(pfile.schema_arrow, str(path))
    if problems:
        raise RecordError("; ".join(problems))
    return pfile


def _read_split(records_dir: Path | str, split: str) -> pa.Table:
    path = split_path(records_dir, split)
    if not path.exists():
        meta_count = read_meta(records_dir)["counts"].get("splits", {}).get(split, {}).get("total", 0)
        if meta_count:
            raise RecordError(
                f"{path} is missing but {META_FILE} counts {meta_count} rows in split '{split}'"
            )
        return ARROW_SCHEMA.empty_table()
    _open_checked(path)
    table = _with_later_columns(pq.read_table(path, columns=_present_columns(path)))
    for field in ARROW_SCHEMA:
        if not field.nullable and table.column(field.name).null_count:
            raise RecordError(
                f"{path}: column '{field.name}' has {table.column(field.name).null_count} null(s)"
            )
    return pa.Table.from_arrays([table.column(c) for c in COLUMNS], schema=ARROW_SCHEMA)


def _present_columns(path: Path) -> list[str]:
    """COLUMNS, less the later-added ones a folder written before them lacks."""
    names = set(pq.read_schema(path).names)
    return [c for c in COLUMNS if c in names or c not in LATER_COLUMNS]


def _with_later_columns(table: pa.Table | pa.RecordBatch) -> pa.Table | pa.RecordBatch:
    for name in LATER_COLUMNS:
        if name not in table.schema.names:
            table = table.append_column(ARROW_SCHEMA.field(name), pa.nulls(table.num_rows, pa.string()))
    return table


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return {"$bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "head": data[:16].hex()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _cap(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... and {len(items) - limit} more"
