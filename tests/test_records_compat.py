"""A records folder written before the ``answer_variants`` column existed still reads and validates."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import real_fixtures as rf

from unlearn_core.data import records_io
from unlearn_core.data.adapters import convert
from unlearn_core.data.schema import ARROW_SCHEMA
from unlearn_core.data.validate import validate_records_dir


def test_folder_without_answer_variants_reads_as_null(tmp_path: Path) -> None:
    rf.write_clear(tmp_path / "src")
    convert("clear", tmp_path / "src", tmp_path / "rec")
    for path in (tmp_path / "rec").glob("*.parquet"):
        if path.name == "quarantine.parquet":
            continue
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["answer_variants"]), path)  # the older layout
    table = records_io.read_records(tmp_path / "rec")
    assert table.schema.equals(ARROW_SCHEMA) and table.column("answer_variants").null_count == table.num_rows
    rows = list(records_io.iter_rows(tmp_path / "rec"))
    assert rows and all(r["answer_variants"] is None for _split, _i, r in rows)
    report = validate_records_dir(tmp_path / "rec")
    assert report.ok, report.render()
