"""Small real inputs for the audit tests: a synthetic benchmark with holdout people, its rows encoded by
the shard encoder (in this process, no Ray), tiny LLaVA models, and a pair trained here that knows /
never saw the forget people."""

from __future__ import annotations

import copy
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from unlearn_core.config import ModelConfig, SynthConfig

AUDIT_SYNTH = SynthConfig(
    people=10,
    images_per_person=2,
    unseen_per_person=1,
    forget_pct=40,
    utility_people=2,
    describe_images=0,
    image_size=32,
    seed=3,
)
TRAIN_TASKS = ("identity_vqa", "open_vqa", "fact_vqa")


def encoded_rows(records_dir: Path, processor_dir: Path) -> list[dict[str, Any]]:
    """Every record as a shard row (``pipelines.shards.encode.RowEncoder``, the Ray Data step's encoder)."""
    from pipelines.shards.encode import RowEncoder, view_answers
    from unlearn_core.data.records_io import read_records

    table = read_records(records_dir)
    encoder = RowEncoder(str(processor_dir), 32, view_answers(table, 0))
    out = encoder({k: table.column(k).to_numpy(zero_copy_only=False) for k in table.column_names})
    rows = [r for r in out.to_pylist() if r.get("quarantine_reason") is None]
    assert len(rows) == table.num_rows
    return rows


@cache
def tiny_benchmark() -> dict[str, Any]:
    """Records, processor, encoded rows and a randomly initialised tiny LLaVA (built once per session)."""
    from transformers import AutoProcessor

    from pipelines.shards.build import build_processor
    from unlearn_core.data.records_io import read_records, write_records
    from unlearn_core.data.synth import generate_benchmark
    from unlearn_core.models.tiny import build_tiny_llava

    root = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    write_records(generate_benchmark(AUDIT_SYNTH), root / "records", source="synthetic")
    build_processor(
        "tiny-llava", read_records(root / "records"), root / "processor", ModelConfig(spec="tiny-llava"), 32
    )
    processor = AutoProcessor.from_pretrained(root / "processor")
    model, _ = build_tiny_llava(processor.tokenizer, image_size=32, seed=0)
    rows = encoded_rows(root / "records", root / "processor")
    return {"root": root, "processor": processor, "model": model, "rows": rows, "records_rows": rows}


@contextmanager
def one_thread():
    """Torch on one intra-op thread (as the audit's attacks run): on a busy 2-core machine two spinning
    threads made the tiny model's forward 50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@cache
def trained_pair(steps: int = 200) -> dict[str, Any]:
    """``knows``: trained on the forget and retain people's identity, open and fact rows; ``never``: the same
    recipe (same initial weights, optimiser, steps) on the retain people's only (the retrained reference)."""
    from unlearn_core.audit.relearn import fine_tune

    bench = tiny_benchmark()
    rows = [r for r in bench["rows"] if r["split"] in ("forget", "retain") and r["task"] in TRAIN_TASKS]
    retain = [r for r in rows if r["split"] == "retain"]
    knows = copy.deepcopy(bench["model"])
    never = copy.deepcopy(bench["model"])
    with one_thread():
        fine_tune(knows, bench["processor"], rows, steps=steps, lr=2e-3, batch_size=16)
        fine_tune(never, bench["processor"], retain, steps=steps, lr=2e-3, batch_size=16)
    return {**bench, "knows": knows, "never": never}
