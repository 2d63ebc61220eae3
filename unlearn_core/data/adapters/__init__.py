"""Format adapters: published benchmark folders -> a canonical records folder.

``convert("mllmu-bench" | "clear" | "jsonl", source, out)`` picks the adapter from the registry
below. Every adapter reads its source, hands candidate rows (and rows it could not even read) to a
``Conversion``, which validates them (``validate.validate_rows``), writes the records folder
(``records_io.write_records``) and returns a ``ConvertReport`` with read / written / quarantined per
source config, the configs it deliberately left out and the folders it did not recognise.

Also here: helpers for the Hugging Face hub layout shared by the parquet adapters (one subfolder per
config holding ``*.parquet`` files; rows read batch by batch, rows with non-UTF-8 text isolated).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from unlearn_core.data.records_io import write_records
from unlearn_core.data.schema import RecordError
from unlearn_core.data.validate import reconcile, validate_rows

# format name -> module defining `convert(source, out, *, forget_config=None) -> ConvertReport`
FORMATS: dict[str, str] = {
    "clear": "unlearn_core.data.adapters.clear",
    "jsonl": "unlearn_core.data.adapters.jsonl",
    "mllmu-bench": "unlearn_core.data.adapters.mllmu_bench",
}
NOT_UTF8 = "<not valid UTF-8>"


class UnknownFormatError(ValueError):
    """The format name is not in the registry; the message lists the valid ones."""


class Converter(Protocol):
    def __call__(self, source: Path, out: Path, *, forget_config: str | None = None) -> ConvertReport: ...


def format_names() -> tuple[str, ...]:
    return tuple(sorted(FORMATS))


def get_converter(name: str) -> Converter:
    if name not in FORMATS:
        raise UnknownFormatError(f"unknown format {name!r}; valid formats: {', '.join(format_names())}")
    return importlib.import_module(FORMATS[name]).convert


def convert(
    fmt: str, source: Path | str, out: Path | str, *, forget_config: str | None = None
) -> ConvertReport:
    """Convert the dataset at ``source`` (format ``fmt``) into a records folder at ``out``."""
    return get_converter(fmt)(Path(source), Path(out), forget_config=forget_config)


# ------------------------------------------------------------------------------------------ report


@dataclass
class ConfigCounts:
    """One source config: its rows, the rows left out on purpose, and the records made from it."""

    role: str  # where its records go, e.g. "forget", "retain", "forget_unseen/retain_unseen"
    source_rows: int = 0
    skipped_rows: int = 0
    read: int = 0  # candidate records + source rows that could not be read
    written: int = 0
    quarantined: int = 0
    without_facts: int = 0  # converted rows whose records carry no private facts (MLLMU-Bench: no biography)


@dataclass
class ConvertReport:
    format: str
    source: str
    out: str
    configs: dict[str, ConfigCounts] = field(default_factory=dict)
    skipped_configs: dict[str, str] = field(default_factory=dict)  # config -> why it was left out
    warnings: list[str] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)  # counts returned by write_records
    first_quarantined: list[str] = field(default_factory=list)  # "origin: reason" of the first few

    @property
    def totals(self) -> dict[str, int]:
        keys = ("read", "written", "quarantined")
        return {k: sum(getattr(c, k) for c in self.configs.values()) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["totals"] = self.totals
        return out

    def render(self) -> str:
        lines = [f"{self.format}: {self.source} -> {self.out}"]
        lines.append(
            f"  {'config':<22} {'split':<28} {'rows':>6} {'skip':>5} {'read':>7} {'written':>7} {'quar.':>6}"
        )
        for name, c in self.configs.items():
            lines.append(
                f"  {name:<22} {c.role:<28} {c.source_rows:>6} {c.skipped_rows:>5} {c.read:>7} {c.written:>7} "
                f"{c.quarantined:>6}"
            )
        t = self.totals
        lines.append(f"  total: read {t['read']} = written {t['written']} + quarantined {t['quarantined']}")
        for split, s in self.records.get("splits", {}).items():
            tasks = ", ".join(f"{task} {n}" for task, n in s["tasks"].items())
            lines.append(f"  {split}: {s['total']} ({tasks})")
        lines += [
            f"  {name}: {c.without_facts} rows without private facts (leak checks find no name or fact in them)"
            for name, c in self.configs.items()
            if c.without_facts
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped_configs.items()]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


# -------------------------------------------------------------------------------------- conversion


def config_of(origin: str) -> str:
    """The config an origin belongs to: ``"forget_5/train-...parquet#3"`` -> ``"forget_5"``."""
    return origin.split("/", 1)[0] if "/" in origin else origin.split("#", 1)[0]


class Conversion:
    """Collects an adapter's candidate rows and rejections, then validates, writes and reconciles."""

    def __init__(self, fmt: str, source: Path, out: Path) -> None:
        self.source = source
        self.out = out
        self.report = ConvertReport(format=fmt, source=str(source), out=str(out))
        self._rows: list[tuple[str, dict[str, Any]]] = []
        self._rejected: list[dict[str, Any]] = []

    def config(self, name: str, role: str) -> ConfigCounts:
        return self.report.configs.setdefault(name, ConfigCounts(role=role))

    def add(self, origin: str, row: dict[str, Any]) -> None:
        self._rows.append((origin, row))

    def reject(self, origin: str, reason: str, row: Mapping[str, Any]) -> None:
        self._rejected.append({"origin": origin, "reason": reason, "row": dict(row)})

    def skip_config(self, name: str, reason: str) -> None:
        self.report.skipped_configs[name] = reason

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)

    def finish(self, source_label: str) -> ConvertReport:
        result = validate_rows(self._rows, rejected=self._rejected)
        counts = write_records(result.good, self.out, source=source_label, quarantine=result.quarantined)
        for origin, _row in self._rows:
            self._counts_for(origin).read += 1
        for entry in self._rejected:
            self._counts_for(entry["origin"]).read += 1
        for origin in result.origins:
            self._counts_for(origin).written += 1
        for entry in result.quarantined:
            self._counts_for(entry["origin"]).quarantined += 1
        for name, c in self.report.configs.items():
            reconcile(c.read, c.written, c.quarantined, what=f"config {name}")
        totals = self.report.totals
        reconcile(totals["read"], counts["total"], counts["quarantined"], what="conversion")
        self.report.records = counts
        self.report.first_quarantined = [f"{q['origin']}: {q['reason']}" for q in result.quarantined[:5]]
        return self.report

    def _counts_for(self, origin: str) -> ConfigCounts:
        return self.config(config_of(origin), role="?")


# ------------------------------------------------------------------------------- hub folder layout


@dataclass(frozen=True)
class SourceConfig:
    """One config of a hub-layout dataset: its folder and its parquet files (sorted)."""

    name: str
    folder: Path
    files: tuple[Path, ...]

    def origin(self, path: Path, index: int) -> str:
        """Where a row comes from: ``"forget_5/train-00000-of-00001.parquet#3"``."""
        return f"{self.name}/{path.relative_to(self.folder).as_posix()}#{index}"

    def columns(self) -> set[str]:
        return set(pq.read_schema(self.files[0]).names)


def discover_configs(source: Path, *, example: str = "CONFIG/train-*.parquet") -> dict[str, SourceConfig]:
    """Config name -> ``SourceConfig``, for a folder laid out like a hub dataset repo.

    A folder that itself holds parquet files (no config subfolders) counts as one config named
    after the folder.
    """
    if not source.is_dir():
        raise RecordError(f"source {source} is not a folder")
    configs: dict[str, SourceConfig] = {}
    for child in sorted(source.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            files = tuple(sorted(p for p in child.rglob("*.parquet") if p.is_file()))
            if files:
                configs[child.name] = SourceConfig(child.name, child, files)
    direct = tuple(sorted(p for p in source.glob("*.parquet") if p.is_file()))
    if not configs and direct:
        configs[source.name] = SourceConfig(source.name, source, direct)
    if not configs:
        raise RecordError(f"no config folders with parquet files under {source} (expected e.g. {example})")
    return configs


def iter_parquet_rows(path: Path, *, batch_size: int = 16) -> Iterator[tuple[int, dict[str, Any], list[str]]]:
    """Yield ``(row_index, row, bad_columns)`` for one parquet file.

    ``bad_columns`` names the columns whose text is not valid UTF-8 in that row (their value is
    replaced by ``NOT_UTF8``); such a row should be quarantined, the others are read normally.
    """
    try:
        pfile = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise RecordError(f"{path}: not a readable Parquet file ({exc})") from exc
    index = 0
    for batch in pfile.iter_batches(batch_size=batch_size):
        for row, bad in _batch_rows(batch):
            yield index, row, bad
            index += 1


def _batch_rows(batch: pa.RecordBatch) -> Iterator[tuple[dict[str, Any], list[str]]]:
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = None
    if rows is not None:
        for row in rows:
            yield row, []
        return
    for i in range(batch.num_rows):  # slow path: find the rows and columns that do not decode
        row: dict[str, Any] = {}
        bad: list[str] = []
        for name in batch.schema.names:
            try:
                row[name] = batch.column(name)[i].as_py()
            except UnicodeDecodeError:
                row[name] = NOT_UTF8
                bad.append(name)
        yield row, bad
