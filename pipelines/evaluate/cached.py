"""Evaluations keyed by the weights' sha256, the shards' fingerprint, the sample count and the evaluation's
version: a starting model is evaluated once per shard set, however many runs and sweeps start from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.evaluate.batch_eval import evaluate
from pipelines.shards import load_manifest
from unlearn_core.eval.runner import EVAL_VERSION
from unlearn_core.models.loading import weights_sha256


def cache_path(model_dir: Path, shards: Path, results_dir: Path, max_per_group: int) -> Path:
    fp = load_manifest(shards)["fingerprint"][:12]
    name = f"eval-{weights_sha256(model_dir)[:12]}-{fp}-{max_per_group}-v{EVAL_VERSION}.json"
    return Path(results_dir) / name


def evaluate_cached(model_dir: Path, shards: Path, results_dir: Path, max_per_group: int) -> dict[str, Any]:
    """``evaluate(model_dir, shards)``, read from ``results_dir`` when this exact evaluation ran before."""
    path = cache_path(model_dir, shards, results_dir, max_per_group)
    if path.exists():
        return json.loads(path.read_text())
    report = evaluate(model_dir, shards, max_per_group=max_per_group)
    _write(path, report)
    return report


def remember_evaluation(
    report: dict[str, Any], model_dir: Path, shards: Path, results_dir: Path, max_per_group: int
) -> Path:
    """Keep an evaluation of these weights made elsewhere, e.g. a fine-tune's final one (its workers
    generate the same rows in the same chunks as ``evaluate``: the same report), so that the runs
    starting from the model do not evaluate it again."""
    path = cache_path(model_dir, shards, results_dir, max_per_group)
    _write(path, report)
    return path


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
