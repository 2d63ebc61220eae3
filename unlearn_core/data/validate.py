"""Validation of canonical records: row-level problems are quarantined, dataset-level ones are errors.

Row level (the row goes to quarantine with a reason ``"<field>: <what is wrong>"``): a missing
required field or a wrong type, an empty question or answer, an unknown split or task, image bytes
that do not decode (checked by actually decoding them with Pillow), text bytes that are not UTF-8, an
MC answer that is not one of its options, an image task without an image, a text-only task with one.

Dataset level (``RecordError``, listing the offenders): a repeated ``sample_id``; an entity on both
the forget side (forget, forget_unseen) and the retain side (retain, retain_unseen).

Counts are reconciled: rows read == rows kept + rows quarantined.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

from unlearn_core.data import records_io
from unlearn_core.data.schema import COLUMNS, MC_TASKS, SPLITS, TASKS, TEXT_ONLY_TASKS, RecordError

# Tasks whose question is about an image: a record without one is useless.
IMAGE_TASKS: frozenset[str] = frozenset(
    {"identity_vqa", "open_vqa", "fact_vqa", "mc_vqa", "caption", "guided"}
)
FORGET_SIDE: tuple[str, ...] = ("forget", "forget_unseen")
RETAIN_SIDE: tuple[str, ...] = ("retain", "retain_unseen")
_TEXT_FIELDS = ("sample_id", "entity_id", "split", "task", "question", "answer")
_NON_EMPTY = ("sample_id", "entity_id", "question", "answer")
_JSON_FIELDS = ("private_facts", "visible_attributes", "answer_variants")
_LIST_LIMIT = 20


class RowProblem(ValueError):
    """One row-level problem; the message is the quarantine reason (``"<field>: ..."``)."""


@dataclass
class ValidationResult:
    good: list[dict[str, Any]]  # canonical rows, ready for records_io.write_records
    quarantined: list[dict[str, Any]]  # {"origin", "reason", "row"}
    counts: dict[str, Any]  # {"read", "good", "quarantined", "reasons": {field: n}}
    origins: list[str] = field(default_factory=list)  # origin of each good row, same order


def validate_rows(
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    rejected: Iterable[Mapping[str, Any]] = (),
    check_images: bool = True,
) -> ValidationResult:
    """Check ``(origin, row)`` pairs; return the good rows (normalised) and the quarantined ones.

    ``rejected`` are entries an adapter already refused while reading its source (``{"origin",
    "reason", "row"}``); they count as read and quarantined. Dataset-level problems raise
    ``RecordError``.
    """
    checker = ImageChecker() if check_images else None
    good: list[dict[str, Any]] = []
    origins: list[str] = []
    quarantined: list[dict[str, Any]] = [dict(entry) for entry in rejected]
    read = len(quarantined)
    for origin, row in rows:
        read += 1
        try:
            good.append(normalize_row(row, checker))
            origins.append(origin)
        except RowProblem as problem:
            quarantined.append({"origin": origin, "reason": str(problem), "row": dict(row)})
    reconcile(read, len(good), len(quarantined), what="validate_rows")
    problems = duplicate_problems(good, origins) + overlap_problems(good, origins)
    if problems:
        raise RecordError("\n".join(problems))
    reasons = Counter(str(q["reason"]).split(":", 1)[0] for q in quarantined)
    counts = {
        "read": read,
        "good": len(good),
        "quarantined": len(quarantined),
        "reasons": dict(sorted(reasons.items())),
    }
    return ValidationResult(good=good, quarantined=quarantined, counts=counts, origins=origins)


def reconcile(read: int, written: int, quarantined: int, *, what: str) -> None:
    """Every row read is either written or quarantined; anything else is a bug worth stopping for."""
    if read != written + quarantined:
        raise RecordError(
            f"{what}: counts do not reconcile: read {read} != written {written} + quarantined {quarantined}"
        )


def normalize_row(row: Mapping[str, Any], checker: ImageChecker | None = None) -> dict[str, Any]:
    """The canonical form of one row, or ``RowProblem`` naming the first field that is wrong."""
    out: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        if row.get(name) is None:
            raise RowProblem(f"{name}: missing required field")
        out[name] = _text(row[name], name)
    for name in _NON_EMPTY:
        if not out[name].strip():
            raise RowProblem(f"{name}: empty")
    if out["split"] not in SPLITS:
        raise RowProblem(f"split: invalid {out['split']!r} (valid: {', '.join(SPLITS)})")
    if out["task"] not in TASKS:
        raise RowProblem(f"task: invalid {out['task']!r} (valid: {', '.join(TASKS)})")
    out["source"] = "" if row.get("source") is None else _text(row["source"], "source")
    out["options"] = _options(row.get("options"), out["task"], out["answer"])
    out["image"] = _image(row.get("image"), out["task"], checker)
    for name in _JSON_FIELDS:
        out[name] = _json_object(row.get(name), name)
    return {c: out[c] for c in COLUMNS}


class ImageChecker:
    """Decodes image bytes with Pillow (``Image.open(...).load()``), each distinct image once."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[bytes, str | None]] = {}
        self._by_digest: dict[bytes, str | None] = {}

    def problem(self, data: bytes) -> str | None:
        """None if the bytes decode as an image, else what went wrong."""
        hit = self._by_id.get(id(data))
        if hit is not None and hit[0] is data:
            return hit[1]
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest not in self._by_digest:
            self._by_digest[digest] = _decode_problem(data)
        result = self._by_digest[digest]
        self._by_id[id(data)] = (data, result)  # keeps `data` alive, so its id cannot be reused
        return result


def duplicate_problems(rows: Sequence[Mapping[str, Any]], origins: Sequence[str]) -> list[str]:
    where: dict[str, list[str]] = {}
    for row, origin in zip(rows, origins, strict=True):
        where.setdefault(str(row["sample_id"]), []).append(origin)
    dups = sorted((sid, locs) for sid, locs in where.items() if len(locs) > 1)
    if not dups:
        return []
    listed = [f"{sid!r} at {', '.join(locs[:5])}" for sid, locs in dups[:_LIST_LIMIT]]
    more = f" ... and {len(dups) - _LIST_LIMIT} more" if len(dups) > _LIST_LIMIT else ""
    return [f"{len(dups)} duplicate sample_id(s): " + "; ".join(listed) + more]


def overlap_problems(rows: Sequence[Mapping[str, Any]], origins: Sequence[str]) -> list[str]:
    """Entities present on both the forget side and the retain side, and holdout entities (never
    trained on: membership inference's non-members) present in any other split."""
    seen: dict[str, dict[str, tuple[str, str]]] = {}
    for row, origin in zip(rows, origins, strict=True):
        split = row["split"]
        side = "forget" if split in FORGET_SIDE else "retain" if split in RETAIN_SIDE else split
        seen.setdefault(str(row["entity_id"]), {}).setdefault(side, (split, origin))
    problems = []
    both = sorted((e, sides) for e, sides in seen.items() if "forget" in sides and "retain" in sides)
    if both:
        listed = [
            f"{entity!r} in {sides['forget'][0]} ({sides['forget'][1]}) and in {sides['retain'][0]} ({sides['retain'][1]})"
            for entity, sides in both[:_LIST_LIMIT]
        ]
        more = f" ... and {len(both) - _LIST_LIMIT} more" if len(both) > _LIST_LIMIT else ""
        problems.append(
            f"{len(both)} entit{'y' if len(both) == 1 else 'ies'} on both the forget and the retain side: "
            + "; ".join(listed)
            + more
            + ". This makes unlearning meaningless: the model would be asked to forget and to keep the same "
            "person. Use matching forget/retain configs or fix the source splits."
        )
    mixed = sorted((e, sides) for e, sides in seen.items() if "holdout" in sides and len(sides) > 1)
    if mixed:
        listed = [
            f"{entity!r} in holdout ({sides['holdout'][1]}) and in "
            + ", ".join(
                f"{split} ({origin})" for side, (split, origin) in sorted(sides.items()) if side != "holdout"
            )
            for entity, sides in mixed[:_LIST_LIMIT]
        ]
        more = f" ... and {len(mixed) - _LIST_LIMIT} more" if len(mixed) > _LIST_LIMIT else ""
        problems.append(
            f"{len(mixed)} holdout entit{'y' if len(mixed) == 1 else 'ies'} also in another split: "
            + "; ".join(listed)
            + more
            + ". Holdout people must never be trained on (membership inference compares them with the forget people)."
        )
    return problems


# ------------------------------------------------------------------------------ records folder check


@dataclass
class RecordsReport:
    """Result of re-checking a written records folder (``unlearn data validate DIR``)."""

    records_dir: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> task -> rows
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def total(self) -> int:
        return sum(sum(tasks.values()) for tasks in self.counts.values())

    def render(self, max_problems: int = 50) -> str:
        lines = [
            f"records folder: {self.records_dir}",
            f"rows: {self.total}, quarantined: {self.quarantined}",
        ]
        for split, tasks in self.counts.items():
            detail = ", ".join(f"{task} {n}" for task, n in sorted(tasks.items()))
            lines.append(f"  {split}: {sum(tasks.values())} ({detail})")
        if self.ok:
            lines.append("OK: schema, sample_ids, forget/retain separation and images all check out")
        else:
            lines.append(f"FAILED: {len(self.problems)} problem(s)")
            lines.extend(f"  - {p}" for p in self.problems[:max_problems])
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def validate_records_dir(records_dir: Path | str, *, check_images: bool = True) -> RecordsReport:
    """Re-check a records folder: schema, row validity, image decoding, duplicates, overlap, counts.

    Raises ``RecordError`` only when the folder cannot be checked at all (missing, or no metadata);
    everything else is listed in the report.
    """
    root = Path(records_dir)
    meta = records_io.read_meta(root)
    report = RecordsReport(records_dir=str(root))
    checker = ImageChecker() if check_images else None
    keys: list[dict[str, Any]] = []
    origins: list[str] = []
    _check_stray_files(root, report)
    for split in SPLITS:
        path = records_io.split_path(root, split)
        if not path.exists():
            continue
        try:
            rows = records_io.iter_rows(root, [split])
            for _split, index, row in rows:
                origin = f"{path.name}#{index}"
                _check_written_row(row, split, origin, checker, report)
                keys.append({k: row.get(k) for k in ("sample_id", "entity_id", "split")})
                origins.append(origin)
                tasks = report.counts.setdefault(split, {})
                tasks[str(row.get("task"))] = tasks.get(str(row.get("task")), 0) + 1
        except RecordError as exc:
            report.problems.append(str(exc))
    report.problems += duplicate_problems(keys, origins) + overlap_problems(keys, origins)
    _check_meta_counts(meta, report)
    _check_quarantine(root, meta, report)
    return report


def _check_written_row(
    row: Mapping[str, Any], split: str, origin: str, checker: ImageChecker | None, report: RecordsReport
) -> None:
    try:
        normalize_row(row, checker)
    except RowProblem as problem:
        report.problems.append(f"{origin} ({row.get('sample_id')!r}): {problem}")
    if row.get("split") != split:
        report.problems.append(
            f"{origin} ({row.get('sample_id')!r}): split {row.get('split')!r} in {split}.parquet"
        )


def _check_stray_files(root: Path, report: RecordsReport) -> None:
    known = {f"{s}.parquet" for s in SPLITS} | {records_io.QUARANTINE_FILE}
    for path in sorted(root.glob("*.parquet")):
        if path.name not in known:
            report.problems.append(f"{path.name}: not a split file (valid: {', '.join(SPLITS)})")


def _check_meta_counts(meta: Mapping[str, Any], report: RecordsReport) -> None:
    meta_splits = meta["counts"].get("splits", {})
    for split in SPLITS:
        expected = meta_splits.get(split, {}).get("total", 0)
        actual = sum(report.counts.get(split, {}).values())
        if expected != actual:
            report.problems.append(
                f"{records_io.META_FILE}: split '{split}' counts {expected} rows, files hold {actual}"
            )


def _check_quarantine(root: Path, meta: Mapping[str, Any], report: RecordsReport) -> None:
    try:
        report.quarantined = records_io.read_quarantine(root).num_rows
    except RecordError as exc:
        report.problems.append(str(exc))
        return
    expected = meta["counts"].get("quarantined", 0)
    if expected != report.quarantined:
        report.problems.append(
            f"{records_io.META_FILE}: counts {expected} quarantined rows, "
            f"{records_io.QUARANTINE_FILE} holds {report.quarantined}"
        )


# --------------------------------------------------------------------------------------- row helpers


def _text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowProblem(f"{name}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    raise RowProblem(f"{name}: expected str, got {type(value).__name__}")


def _options(value: Any, task: str, answer: str) -> list[str] | None:
    if value is None:
        if task in MC_TASKS:
            raise RowProblem(f"options: missing for multiple-choice task {task}")
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise RowProblem(f"options: expected a list of str, got {type(value).__name__}")
    options = []
    for i, option in enumerate(value):
        if option is None:
            raise RowProblem(f"options: item {i} is null, expected str")
        options.append(_text(option, f"options[{i}]"))
    if task in MC_TASKS:
        if len(options) < 2:
            raise RowProblem(
                f"options: a multiple-choice question needs at least 2 options, got {len(options)}"
            )
        if answer not in options:
            raise RowProblem(f"answer: {answer!r} is not among the options {options}")
    return options


def _image(value: Any, task: str, checker: ImageChecker | None) -> bytes | None:
    if value is None:
        if task in IMAGE_TASKS:
            raise RowProblem(f"image: missing, task {task} needs an image")
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise RowProblem(f"image: expected encoded image bytes, got {type(value).__name__}")
    data = value if isinstance(value, bytes) else bytes(value)
    if task in TEXT_ONLY_TASKS:
        raise RowProblem(f"image: task {task} is text-only but the row has an image")
    if not data:
        raise RowProblem("image: empty bytes")
    problem = checker.problem(data) if checker is not None else None
    if problem is not None:
        raise RowProblem(f"image: cannot decode ({problem})")
    return data


def _json_object(value: Any, name: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, Mapping):
        parsed: Any = dict(value)
    else:
        text = _text(value, name)
        try:
            parsed = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise RowProblem(f"{name}: not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, dict):
        raise RowProblem(f"{name}: expected a JSON object, got {type(parsed).__name__}")
    try:
        return json.dumps(parsed, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise RowProblem(f"{name}: not JSON-serialisable ({exc})") from exc


def _decode_problem(data: bytes) -> str | None:
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image is a bad image, whatever else set this
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
    except Exception as exc:  # any decoder failure means the bytes are unusable
        return f"{type(exc).__name__}: {exc}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return None
