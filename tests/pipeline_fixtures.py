"""Small real inputs shared by the pipeline tests: a tiny synthetic benchmark and its shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unlearn_core.config import SynthConfig
from unlearn_core.data.records_io import write_records
from unlearn_core.data.synth import generate_benchmark

TINY_SYNTH = SynthConfig(
    people=6,
    images_per_person=2,
    unseen_per_person=1,
    forget_pct=34,
    utility_people=2,
    describe_images=4,
    image_size=32,
    seed=3,
)


# The tiny sweep space of the sweep tests: 2 GA trials of 2 or 4 steps, evaluated every 2 steps.
TINY_GA_SPACE = """
method: ga
num_samples: 2
base:
  train.eval_every: 2
  train.eval_max_samples: 4
space:
  train.lr: {loguniform: [1.0e-4, 3.0e-3]}
  train.steps: {choice: [2, 4]}
objective:
  metric: score
  mode: min
  terms: {forget.leak_rate: 1.0, retain.vqa_acc: -1.0, quality.informativeness: -0.5}
"""


def write_tiny_records(out: Path, cfg: SynthConfig = TINY_SYNTH) -> Path:
    write_records(generate_benchmark(cfg), out, source="synthetic")
    return out


def write_tiny_vanilla(records: Path, out: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised tiny LLaVA (no fine-tune, no Ray) with the processor ``data shard`` builds
    for ``records``: a sweep given ``records=`` and ``model.spec=out`` shards the records itself."""
    from transformers import AutoProcessor

    from pipelines.shards.build import build_processor
    from unlearn_core.config import ModelConfig
    from unlearn_core.data.records_io import read_records
    from unlearn_core.models.loading import save_model
    from unlearn_core.models.tiny import build_tiny_llava

    proc_dir = out.parent / f"{out.name}.processor"
    build_processor("tiny-llava", read_records(records), proc_dir, ModelConfig(spec="tiny-llava"), image_size)
    processor = AutoProcessor.from_pretrained(proc_dir)
    model, _ = build_tiny_llava(processor.tokenizer, image_size=image_size, seed=seed)
    return save_model(model, processor, out)


def save_tiny_model(shards: Path, out: Path) -> Path:
    """A randomly initialised tiny LLaVA saved with the processor ``data shard`` wrote into ``shards``."""
    from transformers import AutoProcessor

    from unlearn_core.models.loading import save_model
    from unlearn_core.models.tiny import build_tiny_llava

    processor = AutoProcessor.from_pretrained(shards / "processor")
    model, _ = build_tiny_llava(processor.tokenizer, image_size=32, seed=0)
    return save_model(model, processor, out)


def write_sweep_inputs(root: Path) -> dict[str, Path]:
    """Tiny benchmark shards and a randomly initialised tiny 'vanilla' model in ``root/wd`` (no fine-tune)."""
    from pipelines.shards.build import shard_records

    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    save_tiny_model(root / "shards", root / "wd" / "models" / "vanilla")
    return {"root": root, "shards": root / "shards", "workdir": root / "wd"}


def reserved_placement_groups(timeout_s: float = 30.0) -> dict[str, dict]:
    """The placement groups still reserved (not REMOVED) in the connected Ray, after giving the ones of
    just-finished runs ``timeout_s`` to be released. Read from the GCS (``placement_group_table``), so
    it works in a Ray started without the dashboard."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        live = {k: v for k, v in ray.util.placement_group_table().items() if v["state"] != "REMOVED"}
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(0.5)


def write_tiny_train_shards(root: Path) -> Path:
    """Tiny benchmark records sharded at 32x32 under ``root/shards`` (a Ray Train module's inputs)."""
    from pipelines.shards.build import shard_records

    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    return root / "shards"


def fit_on_batch(model: Any, batch: dict[str, Any], steps: int, lr: float = 3e-3) -> float:
    """Train ``model`` on one collated batch for ``steps`` AdamW steps (a model that has seen these
    answers); returns the last loss."""
    import torch

    from unlearn_core.data.encode import model_inputs

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.item())


def tiny_finetune_spec(cfg: Any, shards: Path, **extra: Any) -> Any:
    """The ``WorkerSpec`` of a fine-tune of a fresh tiny LLaVA on ``shards`` (32 x 32 images)."""
    from pipelines.train import WorkerSpec

    return WorkerSpec(
        cfg=cfg.model_dump(),
        mode="finetune",
        processor_dir=str(shards / "processor"),
        init_model="tiny-llava",
        image_size=32,
        **extra,
    )
