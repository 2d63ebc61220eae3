"""Small real inputs shared by the pipeline tests: a tiny synthetic benchmark and its shards."""

from __future__ import annotations

from pathlib import Path

from unlearn_core.config import SynthConfig
from unlearn_core.data.records_io import write_records
from unlearn_core.data.synth import generate_benchmark

TINY_SYNTH = SynthConfig(people=6, images_per_person=2, unseen_per_person=1, forget_pct=34, utility_people=2,
                         image_size=32, seed=3)


def write_tiny_records(out: Path, cfg: SynthConfig = TINY_SYNTH) -> Path:
    write_records(generate_benchmark(cfg), out, source="synthetic")
    return out
