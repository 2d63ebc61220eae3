"""Samples/s of the vanilla SFT step with 1 and 2 Ray Train workers (DDP over gloo) on the tiny model.

Each worker: ``cpus_per_worker=1``, ``torch_threads=1``, batch 32 (so 2 workers train on 64 samples
per step). ``pipelines.train.fit`` with a ``WorkerSpec`` on the shards; steps/s comes from rank 0's
``steps_per_s`` reports between step 10 and the last step (start-up excluded). The two
configurations alternate in every repeat (same load).

Ray is started with 3 logical CPUs on the 2-core machine: with 2 one-CPU workers holding both
CPUs, Ray Data's read / filter tasks of the training stream would never get a CPU slot and the run
would hang (the test suite uses ``cpus_per_worker=0.5`` for the same reason). Both configurations
run on the same 3-slot cluster.

Next to it, in the same repeats, a bare PyTorch DDP loop (no Ray Train, no Ray Data): 1 or 2 Ray
tasks (1 CPU, 1 torch thread each, same niceness as Ray's workers) joined in a gloo process group,
in-memory rows of the same stream collated per step, DDP-wrapped model for 2 processes. It shows
how much of the scaling the 2 cores allow at all, apart from Ray's own overhead.

Run: ``.venv/bin/python bench/scaling.py`` (``BENCH_QUICK=1``: fewer steps).
"""

from __future__ import annotations

import time
from typing import Any

import common

from pipelines.shards import stream_dataset
from unlearn_core.config import RunConfig, with_overrides

BATCH = 32
STEPS = 30 if common.QUICK else 50
REPEATS = 3
WORKERS = (1, 2)


def run(inp: common.Inputs, workers: int, tag: str) -> dict[str, Any]:
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(common.BENCH_DIR / "wd"),
            "shards": str(inp.shards),
            "train.steps": STEPS,
            "train.batch_size": BATCH,
            "train.torch_threads": 1,
            "train.num_workers": workers,
            "train.cpus_per_worker": 1,
            "train.launcher": "ray_train",  # 1 vs 2 Ray Train workers
            "train.checkpoint_every": 0,
            "train.eval_every": 0,
        },
    )
    datasets = {"train": stream_dataset(inp.shards, "train", task_weights=cfg.train.task_weights)}
    wall = common.fit_logged(inp, cfg, "finetune", datasets, f"scaling-{tag}")
    rate, a, b = common.steady_rate(common.read_reports(common.report_log(f"scaling-{tag}")))
    return {"steps_per_s": rate, "samples_per_s": rate * BATCH * workers, "wall_s": wall, "window": (a, b)}


def bare_ddp(
    rank: int, world: int, port: int, model_dir: str, rows: list[dict[str, Any]], steps: int
) -> float:
    """One rank of a plain DDP loop; returns this rank's samples/s over ``steps`` timed steps."""
    import random

    import torch
    import torch.distributed as dist

    from pipelines.shards import rows_with_images
    from unlearn_core.config import ModelConfig
    from unlearn_core.data.encode import collate
    from unlearn_core.models.loading import load_model_and_processor
    from unlearn_core.models.lora import prepare_for_training

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, processor = load_model_and_processor(model_dir, ModelConfig(spec=model_dir))
        model = prepare_for_training(
            model, ModelConfig(spec=model_dir)
        )  # freezes unused params, as the worker
        model.train()
        if world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        rng = random.Random(rank)
        warmup = 3
        t0 = 0.0
        for step in range(warmup + steps):
            if step == warmup:
                dist.barrier()
                t0 = time.perf_counter()
            b = collate(rows_with_images(rng.sample(rows, BATCH)), processor)
            opt.zero_grad(set_to_none=True)
            common.next_token_loss(model, b).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return steps * BATCH / (time.perf_counter() - t0)
    finally:
        dist.destroy_process_group()


def run_bare(inp: common.Inputs, workers: int, rows_ref: Any, steps: int) -> float:
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    task = ray.remote(num_cpus=1)(bare_ddp)
    return sum(
        ray.get([task.remote(r, workers, port, str(inp.vanilla), rows_ref, steps) for r in range(workers)])
    )


def main() -> None:
    common.header("bench/scaling.py: 1 vs 2 Ray Train workers (1 CPU, 1 torch thread each)")
    inp = common.inputs()
    common.start_local_ray(3)
    import ray

    rows = stream_dataset(inp.shards, "train", task_weights=RunConfig().train.task_weights).take_all()
    rows_ref = ray.put(rows)
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in WORKERS}
    bare: dict[int, list[float]] = {w: [] for w in WORKERS}
    for r in range(REPEATS):
        for w in WORKERS:
            common.load(f"bare DDP {w} process(es), repeat {r}")
            bare[w].append(run_bare(inp, w, rows_ref, STEPS - 10))
            common.load(f"Ray Train {w} worker(s), repeat {r}")
            runs[w].append(run(inp, w, f"{w}w-{r}"))
            x = runs[w][-1]
            print(
                f"  repeat {r}, {w} worker(s): Ray Train {x['samples_per_s']:.1f} samples/s ({x['steps_per_s']:.2f} "
                f"steps/s, window {x['window']}, fit wall {x['wall_s']:.0f} s); bare DDP {bare[w][-1]:.1f} samples/s",
                flush=True,
            )
    table_rows = []
    results: dict[str, Any] = {"config": {"batch_per_worker": BATCH, "steps": STEPS, "repeats": REPEATS}}
    base = [x["samples_per_s"] for x in runs[1]]
    for w in WORKERS:
        sps = common.Stats([x["samples_per_s"] for x in runs[w]])
        step_ms = common.Stats([1000 / x["steps_per_s"] for x in runs[w]])
        speedup = common.Stats([x["samples_per_s"] / b for x, b in zip(runs[w], base, strict=True)])
        table_rows.append(
            [
                f"Ray Train, {w} worker(s)",
                w * BATCH,
                sps.short(),
                step_ms.short(),
                speedup.short(2),
                f"{speedup.median / w:.0%}",
            ]
        )
        results[f"{w}_workers"] = {
            "samples_per_s": sps.as_dict(),
            "ms_per_step": step_ms.as_dict(),
            "speedup": speedup.as_dict(),
        }
    for w in WORKERS:
        sps = common.Stats(bare[w])
        speedup = common.Stats([x / b for x, b in zip(bare[w], bare[1], strict=True)])
        vs_ray = common.Stats([x["samples_per_s"] / b for x, b in zip(runs[w], bare[w], strict=True)])
        table_rows.append(
            [
                f"bare PyTorch DDP, {w} process(es)",
                w * BATCH,
                sps.short(),
                f"{1000 * w * BATCH / sps.median:.0f}",
                speedup.short(2),
                f"{speedup.median / w:.0%}",
            ]
        )
        results[f"bare_{w}"] = {
            "samples_per_s": sps.as_dict(),
            "speedup": speedup.as_dict(),
            "ray_over_bare": vs_ray.as_dict(),
        }
    print("\nmedian [min, max] over repeats; speed-ups per repeat (same load)")
    results["table"] = common.table(
        ["loop", "samples/step", "samples/s", "ms/step", "speed-up vs 1", "scaling efficiency"], table_rows
    )
    print(common.load_summary())
    common.save("scaling", results)


if __name__ == "__main__":
    main()
