"""Score generations made anywhere against a records folder: `unlearn score`, no model loaded.

A predictions file is JSON lines ``{"sample_id": ..., "generation": "<raw model text>"}``; a line may
also carry ``option_scores`` (one log-prob per option: ``logprob.*`` accuracy) and, for CLEAR,
``paraphrased_loss`` + ``perturbed_losses`` (+ ``caption_loss``), each the mean loss per answer
token (truth ratio, probability), and for its FaceRec / real_* tasks ``facerec_loss`` +
``facerec_perturbed_losses`` / ``open_loss`` + ``open_perturbed_losses`` and the open answers
``facerec_generation`` / ``open_generation``. `unlearn eval` writes the same fields and the ``generation`` on its
per-sample rows, so ``jq -c '.per_sample[]' eval.json`` is a predictions file. Lines that cannot be
used are never dropped silently: ``problems`` counts them with the first ids / line numbers, a known
id whose line has none of ``generation`` (a string), ``option_scores`` or ``paraphrased_loss`` included
(``lines_without_usable_fields``), so n_records = n_scored + missing_ids + lines_without_usable_fields.

``score_outputs`` is shared with `unlearn eval`, so both write the same metrics and per-sample
fields for the same outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from unlearn_core.bounded import iter_lines, load_json_text
from unlearn_core.data import records_io
from unlearn_core.data.schema import COLUMNS, MC_TASKS, SPLITS, RecordError
from unlearn_core.eval.bench_metrics import BenchResult, Losses, forget_quality, score_benchmark
from unlearn_core.eval.metrics import evaluate_outputs
from unlearn_core.eval.protocols import Protocol, resolve_protocol

FIRST_N = 10  # ids / line numbers listed per problem
_USABLE = frozenset(  # a line with none of these is not scored
    {
        "generation",
        "option_scores",
        "paraphrased_loss",
        "facerec_loss",
        "facerec_generation",
        "open_loss",
        "open_generation",
    }
)


def _problem(items: list[Any]) -> dict[str, Any]:
    return {"count": len(items), "first": items[:FIRST_N]}


def load_record_rows(records_dir: str | Path) -> list[dict[str, Any]]:
    """The records of every split as dicts, the image bytes replaced by ``has_image``.

    Images are streamed batch by batch only to see which rows have one, so a full benchmark's photos
    are never all in memory.
    """
    records_io.read_meta(records_dir)  # a records folder, or a RecordError naming what is missing
    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        path = records_io.split_path(records_dir, split)
        if not path.exists():
            continue
        pfile = pq.ParquetFile(path)
        names = [c for c in COLUMNS if c != "image" and c in pfile.schema_arrow.names]
        flags = [
            f
            for batch in pfile.iter_batches(batch_size=256, columns=["image"])
            for f in pc.is_valid(batch.column(0)).to_pylist()
        ]
        part = pfile.read(columns=names).to_pylist()
        for row, flag in zip(part, flags, strict=True):
            row["has_image"] = flag
        rows.extend(part)
    return rows


def read_predictions(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """sample_id -> prediction line, and the problems: unreadable lines (not UTF-8, not JSON, too long
    or nested too deep: ``unlearn_core.bounded``), lines without a sample_id, duplicated ids (the first
    line wins), non-string generations and invalid scores or losses (kept out of scoring)."""
    preds: dict[str, dict[str, Any]] = {}
    bad_json: list[str] = []
    no_id: list[int] = []
    duplicate: list[str] = []
    non_string: list[str] = []
    invalid: list[str] = []
    with open(path, "rb") as fh:
        for number, raw, size in iter_lines(fh):
            if raw is None:
                bad_json.append(f"line {number}: {size} bytes, over the limit")
                continue
            if not raw.strip():
                continue
            try:
                item = load_json_text(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad_json.append(f"line {number}: not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                bad_json.append(f"line {number}: {exc.msg}")
                continue
            except ValueError as exc:  # too deep, too long, a number Python cannot read
                bad_json.append(f"line {number}: {exc}")
                continue
            if not isinstance(item, Mapping) or not isinstance(item.get("sample_id"), (str, int)):
                no_id.append(number)
                continue
            sid = str(item["sample_id"])
            if sid in preds:
                duplicate.append(sid)
                continue
            item = dict(item)
            if "generation" in item and not isinstance(item["generation"], str):
                non_string.append(sid)
                del item["generation"]
            for name in invalid_scores(item):
                invalid.append(f"{sid}: {name}")
                item.pop(name, None)
            preds[sid] = item
    problems = {
        "unreadable_lines": _problem(bad_json),
        "lines_without_sample_id": _problem(no_id),
        "duplicate_ids": _problem(duplicate),
        "non_string_generations": _problem(non_string),
        "invalid_scores": _problem(invalid),
    }
    return preds, problems


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def invalid_scores(item: Mapping[str, Any]) -> list[str]:
    """The fields of a prediction that are present but unusable: ``option_scores`` not a list of numbers
    (-inf allowed, not NaN); ``paraphrased_loss`` / ``caption_loss`` not a finite number >= 0;
    ``perturbed_losses`` not a non-empty list of them. A CLEAR pair is used whole or not at all."""
    bad = []
    scores = item.get("option_scores")
    if "option_scores" in item and not (
        isinstance(scores, list) and scores and all(_number(s) and s != math.inf for s in scores)
    ):
        bad.append("option_scores")

    def loss(value: Any) -> bool:
        return _number(value) and math.isfinite(value) and value >= 0

    pert = item.get("perturbed_losses")
    pert_ok = isinstance(pert, list) and bool(pert) and all(loss(x) for x in pert)
    if "perturbed_losses" in item and not pert_ok:
        bad.append("perturbed_losses")
    if "paraphrased_loss" in item and not (loss(item["paraphrased_loss"]) and pert_ok):
        bad.append("paraphrased_loss")
    if "caption_loss" in item and not loss(item["caption_loss"]):
        bad.append("caption_loss")
    return bad


def score_outputs(
    rows: Sequence[Mapping[str, Any]], outputs: Mapping[str, Mapping[str, Any]], protocol: Protocol
) -> dict[str, Any]:
    """Metrics, their sample counts and per-sample rows for ``rows`` under ``protocol``.

    The project's own checks (``unlearn_core.eval.metrics``: leak rate, recall, quality ...) run on every
    protocol; under a benchmark protocol its multiple-choice rows are left to the benchmark scoring
    (generated letters), so no name carries two statistics.
    """
    own_rows = rows if not protocol.is_benchmark else [r for r in rows if r["task"] not in MC_TASKS]
    own = evaluate_outputs(
        own_rows, {k: v for k, v in outputs.items() if "generation" in v or "option_scores" in v}
    )
    bench = score_benchmark(rows, outputs, protocol) if protocol.is_benchmark else BenchResult({}, {})
    metrics = {**own.metrics, **bench.metrics}
    counts = {**own.counts, **bench.counts}
    merged: dict[str, dict[str, Any]] = {sid: dict(f) for sid, f in bench.per_sample.items()}
    for item in own.per_sample:
        row = merged.setdefault(item["sample_id"], {"sample_id": item["sample_id"], "task": item["task"]})
        flags = item.get("flags", {})
        if "correct" in flags and "correct" not in row:
            row["correct"] = flags["correct"]
        row.update({k: v for k, v in item.items() if k not in row})
    per_sample = [merged[str(r["sample_id"])] for r in rows if str(r["sample_id"]) in merged]
    return {
        "metrics": dict(sorted(metrics.items())),
        "counts": dict(sorted(counts.items())),
        "per_sample": per_sample,
        "truth_losses": bench.truth_losses,
    }


def score_predictions(
    records_dir: str | Path,
    predictions: str | Path,
    *,
    protocol: str | None = None,
    reference_predictions: str | Path | None = None,
) -> dict[str, Any]:
    """`unlearn score`: ``{"protocol", "metrics", "counts", "problems", "per_sample"}``.

    ``reference_predictions`` (CLEAR): the predictions of the model trained on retain only; with
    truth-ratio losses in both files, adds ``clear.forget_quality`` (KS-test p-value).
    """
    rows = load_record_rows(records_dir)
    if not rows:
        raise RecordError(f"{records_dir}: no records")
    proto = resolve_protocol(rows, protocol)
    preds, problems = read_predictions(predictions)
    known = {str(r["sample_id"]) for r in rows}
    problems["unknown_ids"] = _problem(sorted(set(preds) - known))
    problems["missing_ids"] = _problem(sorted(known - set(preds)))
    outputs = {sid: p for sid, p in preds.items() if sid in known and _USABLE.intersection(p)}
    problems["lines_without_usable_fields"] = _problem(sorted((set(preds) & known) - set(outputs)))
    result = score_outputs(rows, outputs, proto)
    if reference_predictions is not None:
        ref_preds, _ = read_predictions(reference_predictions)
        ref = score_outputs(rows, {s: p for s, p in ref_preds.items() if s in known}, proto)
        add_forget_quality(
            result, ref["truth_losses"].get("forget", []), f"{predictions} and {reference_predictions}"
        )
    result.pop("truth_losses")
    return {
        "protocol": proto.name,
        "n_records": len(rows),
        "n_scored": len(result["per_sample"]),
        "problems": problems,
        **result,
    }


def add_forget_quality(result: dict[str, Any], reference: list[Losses], where: str) -> None:
    """``clear.forget_quality`` (and its count) from ``result``'s forget truth-ratio losses and those of
    the retain-only reference model; a RecordError naming ``where`` when either side has none."""
    mine = result["truth_losses"].get("forget", [])
    if not mine or not reference:
        raise RecordError(
            f"forget quality needs paraphrased_loss + perturbed_losses on forget rows in both {where} "
            f"(found {len(mine)} and {len(reference)})"
        )
    result["metrics"]["clear.forget_quality"] = forget_quality(mine, reference)
    result["counts"]["clear.forget_quality"] = len(mine)
    result["metrics"] = dict(sorted(result["metrics"].items()))


def report_truth_losses(path: str | Path, split: str = "forget") -> list[Losses]:
    """The per-sample ``paraphrased_loss`` / ``perturbed_losses`` of ``split`` rows in an `unlearn eval` or
    `unlearn score` JSON report (the reference model's, for forget quality)."""
    try:
        report = load_json_text(Path(path).read_bytes(), max_bytes=None)
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: not a readable JSON report ({exc})") from exc
    rows = report.get("per_sample") if isinstance(report, Mapping) else None
    if not isinstance(rows, list):
        raise RecordError(
            f"{path}: no 'per_sample' list (write it with `unlearn eval --out` or `unlearn score --out`)"
        )
    return [
        (float(r["paraphrased_loss"]), [float(x) for x in r["perturbed_losses"]])
        for r in rows
        if isinstance(r, Mapping)
        and r.get("split") == split
        and "paraphrased_loss" in r
        and not {"paraphrased_loss", "perturbed_losses"} & set(invalid_scores(r))
    ]


def render_score(report: Mapping[str, Any]) -> str:
    """The terminal summary: metric table (with sample counts) and every non-empty problem."""
    from unlearn_core.eval.report import format_table

    lines = [f"protocol {report['protocol']}: {report['n_scored']} of {report['n_records']} records scored"]
    counts = report.get("counts", {})
    lines.append(format_table({"value": report["metrics"], "n": {k: float(v) for k, v in counts.items()}}))
    for name, problem in report.get("problems", {}).items():
        if problem["count"]:
            lines.append(f"{name}: {problem['count']} (first: {', '.join(map(str, problem['first']))})")
    return "\n".join(lines)
