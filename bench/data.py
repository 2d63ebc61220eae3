"""Data path: ``unlearn data shard`` throughput, and how long training waits for batches.

1. Sharding: rows/s of ``pipelines.shards.build.shard_records(..., force=True)`` end to end (processor,
   fingerprint, Ray Data actor pool of 2, Parquet write) vs a single-process loop doing the same
   per-row encode (``prepare_image`` + ``encode_example`` for the row, plus the ``idk_`` / ``rand_``
   views of forget rows) over the same records. The loop runs in a 1-CPU Ray task so it has the
   same niceness as Ray's encode actors (Ray starts workers with nice 15; the machine is shared).
2. Data wait, two ways, for the SFT stream (``train``, ~5.5k rows) and the GA stream (``forget``,
   168 rows = 6 batches of 32, so a fresh epoch every 6 steps):
   a. bare iteration: ``stream_dataset(...)`` (``ray.data.read_parquet`` + the stream filter)
      ``.iter_torch_batches(collate_fn=collate_shard_batch, local shuffle as in pipelines.train)``
      timed per batch in a 1-CPU Ray task, next to the step compute time on pre-collated batches
      (the worker's own ``make_step_fn``); share = data / (data + compute), i.e. no overlap;
   b. inside a real Ray Train worker: a TorchTrainer whose loop is the worker's pieces
      (``build_worker_model``, ``pipelines.train.worker_data.iter_shard``, ``make_step_fn``) with
      ``next(batch_iterator)`` timed; share = time in next() / total step time.
   Both also run the GA stream ``.materialize()``-d before training (a fix that needs no code change:
   every epoch of ``pipelines.train.worker_data.iter_shard`` starts a new Ray Data execution, read + filter
   included), and 2b a prototype of the in-worker fix (``cached_shard``: the small shard read once
   into worker memory and cycled there).

Run: ``.venv/bin/python bench/data.py`` (``BENCH_QUICK=1``: fewer steps).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import common

BATCH = 32
THREADS = 2
REPEATS = 3
ITER_BATCHES = 18 if common.QUICK else 36  # a multiple of 6: whole GA epochs
WORKER_STEPS = 18 if common.QUICK else 36
SKIP = 6  # warm-up steps left out of the worker figures (the first epoch of GA)
TARGET = 0.05
MODES = common.STEP_MODES
# label -> (mode, materialize the stream before training: the proposed fix for small streams)
VARIANTS = {
    "sft (as the pipeline)": ("sft", False),
    "ga (as the pipeline)": ("ga", False),
    "ga, stream materialized first": ("ga", True),
}
# 2b also tries a prototype of the in-worker fix: the small shard read once into memory and cycled there.
WORKER_VARIANTS = {**VARIANTS, "ga, shard cached in worker memory (fix prototype)": ("ga", "cache")}


def run_cfg(inp: common.Inputs, mode: str, steps: int, threads: int = THREADS):
    return common.step_config(inp, mode, steps, batch=BATCH, threads=threads)


def stream_ds(inp: common.Inputs, mode: str):
    from pipelines.shards import stream_dataset
    from unlearn_core.config import TrainConfig

    stream = MODES[mode][1]
    return stream_dataset(
        inp.shards, stream, task_weights=TrainConfig().task_weights if stream == "train" else None
    )


# -- 1. sharding ---------------------------------------------------------------------------------
def encode_loop(records_dir: str, processor_dir: str, image_size: int, seed: int) -> tuple[int, float]:
    """Single-process: the same per-row encode as the shard actors; returns (rows, seconds)."""
    from transformers import AutoProcessor

    from pipelines.shards.encode import view_answers
    from unlearn_core.data.encode import encode_example, prepare_image
    from unlearn_core.data.records_io import read_records

    table = read_records(records_dir)
    processor = AutoProcessor.from_pretrained(processor_dir)
    t0 = time.perf_counter()
    answers = view_answers(table, seed)
    rows = table.to_pylist()
    for row in rows:
        raw = row.get("image")
        image = prepare_image(bytes(raw), image_size) if raw else None
        encode_example(
            processor, question=row["question"], answer=row["answer"], image=image, image_size=image_size
        )
        if row["split"] == "forget":
            for per_row in answers.values():
                if row["sample_id"] in per_row:
                    encode_example(
                        processor,
                        question=row["question"],
                        answer=per_row[row["sample_id"]],
                        image=image,
                        image_size=image_size,
                    )
    return len(rows), time.perf_counter() - t0


class Phases:
    """Times the steps of ``shard_records`` by wrapping the module functions it calls; what is left
    is the Ray Data part (from_arrow, repartition, the encode actor pool, collecting the result)."""

    NAMES = ("read_records", "build_processor", "fingerprint", "view_answers", "_write")

    def __init__(self) -> None:
        import pipelines.shards.build as pre

        self.pre = pre
        self.seconds: dict[str, float] = dict.fromkeys(self.NAMES, 0.0)
        self.orig = {n: getattr(pre, n) for n in self.NAMES}

    def __enter__(self) -> Phases:
        for n, fn in self.orig.items():
            setattr(self.pre, n, self._wrap(n, fn))
        return self

    def _wrap(self, name: str, fn):
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return inner

    def __exit__(self, *exc: Any) -> None:
        for n, fn in self.orig.items():
            setattr(self.pre, n, fn)


def bench_sharding(inp: common.Inputs) -> dict[str, Any]:
    import ray

    from pipelines.shards.build import shard_records

    out = common.BENCH_DIR / "data_shards"
    task = ray.remote(num_cpus=1)(encode_loop)
    shard_rps, loop_rps = [], []
    phases: list[dict[str, float]] = []
    n_rows = 0
    for r in range(REPEATS):
        common.load(f"shard_records repeat {r}")
        with Phases() as ph:
            t0 = time.perf_counter()
            rep = shard_records(
                inp.records, out, model_spec="tiny-llava", image_size=inp.image_size, force=True
            )
            wall = time.perf_counter() - t0
        phases.append({**ph.seconds, "ray_data_encode": wall - sum(ph.seconds.values()), "total": wall})
        n_rows = rep.read
        shard_rps.append(rep.read / wall)
        common.load(f"single-process encode repeat {r}")
        n, secs = ray.get(task.remote(str(inp.records), str(inp.shards / "processor"), inp.image_size, 0))
        loop_rps.append(n / secs)
        print(
            f"  repeat {r}: shard_records {shard_rps[-1]:.0f} rows/s ({wall:.1f} s for {rep.read} rows), "
            f"single-process encode {loop_rps[-1]:.0f} rows/s",
            flush=True,
        )
    s, single = common.Stats(shard_rps), common.Stats(loop_rps)
    ratio = common.Stats([a / b for a, b in zip(shard_rps, loop_rps, strict=True)])
    table = common.table(
        ["path", "rows/s", "x single process"],
        [
            ["shard_records (Ray Data, 2 encode actors, end to end)", s.short(), ratio.short(2)],
            ["single-process encode loop (encode only)", single.short(), "1"],
        ],
    )
    print("\nwhere shard_records spends its time (seconds, median [min, max])")
    phase_rows = []
    for key in (*Phases.NAMES, "ray_data_encode", "total"):
        st = common.Stats([p[key] for p in phases])
        phase_rows.append([key, st.short()])
    phase_rows.append(
        ["(single-process encode of the same rows)", common.Stats([n_rows / x for x in loop_rps]).short()]
    )
    phase_table = common.table(["phase of shard_records", "seconds"], phase_rows)
    return {
        "rows": n_rows,
        "shard_records": s.as_dict(),
        "single": single.as_dict(),
        "ratio": ratio.as_dict(),
        "phases": phases,
        "table": table,
        "phase_table": phase_table,
    }


# -- 2a. bare iteration vs step compute ----------------------------------------------------------
def iterate_and_step(inp: common.Inputs, mode: str, n_batches: int, materialize: bool) -> dict[str, Any]:
    """In one process: seconds per batch of the Ray Data iterator, and seconds per step on
    pre-collated batches (the worker's step function)."""
    import torch

    from pipelines.train import collate_shard_batch
    from unlearn_core.training.worker import build_worker_model, make_step_fn

    torch.set_num_threads(THREADS)
    job_mode = MODES[mode][0]
    cfg = run_cfg(inp, mode, n_batches)
    built = build_worker_model(cfg, job_mode, str(inp.vanilla), str(inp.vanilla), inp.image_size)
    prefixes = next(iter(built.streams.values()))
    ds = stream_ds(inp, mode)
    if materialize:
        ds = ds.materialize()
    waits: list[float] = []
    first_of_epoch: list[float] = []
    batches: list[dict[str, Any]] = []
    epoch = 0
    while len(waits) < n_batches:
        it = iter(
            ds.iter_torch_batches(
                batch_size=BATCH,
                collate_fn=lambda b: collate_shard_batch(b, built.processor, prefixes),
                local_shuffle_buffer_size=max(4 * BATCH, 256),
                local_shuffle_seed=epoch,
                drop_last=False,
            )
        )
        k = 0
        while len(waits) < n_batches:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                break
            dt = time.perf_counter() - t0
            waits.append(dt)
            if k == 0:
                first_of_epoch.append(dt)
            k += 1
            if len(batches) < 6:
                batches.append(b)
        epoch += 1
    model = built.model
    opt = built.make_optimizer(model)
    stream = next(iter(built.streams))

    def cycle_batches():
        i = 0
        while True:
            yield batches[i % len(batches)]
            i += 1

    step_fn = make_step_fn(built, model, opt, {stream: cycle_batches()}, cfg.train)
    step_fn(0)
    steps = []
    for s in range(1, 1 + min(n_batches, 18)):
        t0 = time.perf_counter()
        step_fn(s)
        steps.append(time.perf_counter() - t0)
    return {
        "batch_s": statistics.mean(waits[1:]),
        "first_batch_of_epoch_s": statistics.mean(first_of_epoch),
        "epochs": epoch,
        "step_s": statistics.mean(steps),
        "n_batches": len(waits),
    }


# -- 2b. inside a real Ray Train worker ----------------------------------------------------------
def cached_shard(name: str, batch_size: int, processor: Any, prefixes: tuple[str, ...], seed: int):
    """Fix prototype for small streams: read the worker's shard once, then cycle over it in memory
    (a fresh permutation per epoch, ``collate_shard_batch`` per batch): no Ray Data work per epoch."""
    import numpy as np
    import ray.train

    from pipelines.train import collate_shard_batch

    parts = list(ray.train.get_dataset_shard(name).iter_batches(batch_size=None, batch_format="numpy"))
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(next(iter(cols.values())))
    epoch = 0
    while True:
        order = np.random.default_rng(seed + epoch).permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield collate_shard_batch({k: v[idx] for k, v in cols.items()}, processor, prefixes)
        epoch += 1


def worker_loop(config: dict[str, Any]) -> None:
    """A Ray Train loop built from the worker's own pieces, with next(batch iterator) timed."""
    import ray.train
    import ray.train.torch
    import torch

    from pipelines.train.worker_data import iter_shard as _iter_shard
    from unlearn_core.config import RunConfig
    from unlearn_core.training.loop import to_device
    from unlearn_core.training.worker import build_worker_model, make_step_fn

    cfg = RunConfig.model_validate(config["cfg"])
    torch.set_num_threads(cfg.train.torch_threads)
    built = build_worker_model(cfg, config["mode"], config["model"], config["model"], config["image_size"])
    model = ray.train.torch.prepare_model(built.model, parallel_strategy=None)
    opt = built.make_optimizer(model)
    waits: list[float] = []

    def timed(it):
        while True:
            t0 = time.perf_counter()
            b = next(it)
            waits.append(time.perf_counter() - t0)
            yield b

    source = cached_shard if config["cache"] else _iter_shard
    streams = {
        name: timed(
            to_device(b, torch.device("cpu"))
            for b in source(name, cfg.train.batch_size, built.processor, prefixes, cfg.train.seed)
        )
        for name, prefixes in built.streams.items()
    }
    step_fn = make_step_fn(built, model, opt, streams, cfg.train)
    totals = []
    for step in range(cfg.train.steps):
        t0 = time.perf_counter()
        step_fn(step)
        totals.append(time.perf_counter() - t0)
    w, t = waits[SKIP:], totals[SKIP:]
    ray.train.report(
        {
            "wait_s": sum(w),
            "total_s": sum(t),
            "max_wait_s": max(w),
            "steps": len(t),
            "median_wait_s": statistics.median(w),
            "median_step_s": statistics.median(t),
        }
    )


def worker_wait(inp: common.Inputs, mode: str, materialize: bool | str, tag: str) -> dict[str, Any]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = run_cfg(inp, mode, WORKER_STEPS)
    log = common.BENCH_DIR / "reports" / f"data-worker-{tag}.jsonl"
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "cfg": cfg.model_dump(),
            "mode": MODES[mode][0],
            "model": str(inp.vanilla),
            "cache": materialize == "cache",
            "image_size": inp.image_size,
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=f"bench-data-{tag}-{int(time.time())}",
            storage_path=str(common.BENCH_DIR / "ray_results"),
            callbacks=[common.report_log_callback(log)],
        ),
        datasets={
            MODES[mode][1]: stream_ds(inp, mode).materialize()
            if materialize is True
            else stream_ds(inp, mode)
        },
    )
    trainer.fit()
    return common.read_reports(log)[-1]


def main() -> None:
    import ray

    common.header("bench/data.py: shard throughput and data wait")
    inp = common.inputs()
    common.start_local_ray(2)
    results: dict[str, Any] = {}

    print("\n-- 1. sharding throughput --")
    results["sharding"] = bench_sharding(inp)

    print("\n-- 2a. bare Ray Data iteration vs step compute (1-CPU Ray task, 2 torch threads) --")
    task = ray.remote(num_cpus=1)(iterate_and_step)
    bare: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(REPEATS):
        for v, (m, mat) in VARIANTS.items():
            common.load(f"bare iteration {v} repeat {r}")
            bare[v].append(ray.get(task.remote(inp, m, ITER_BATCHES, mat)))
            x = bare[v][-1]
            print(
                f"  repeat {r} {v}: {1000 * x['batch_s']:.0f} ms/batch (epoch start "
                f"{1000 * x['first_batch_of_epoch_s']:.0f} ms, {x['epochs']} epochs), step "
                f"{1000 * x['step_s']:.0f} ms",
                flush=True,
            )
    rows = []
    for v in VARIANTS:
        b = common.Stats([1000 * x["batch_s"] for x in bare[v]])
        first = common.Stats([1000 * x["first_batch_of_epoch_s"] for x in bare[v]])
        st = common.Stats([1000 * x["step_s"] for x in bare[v]])
        share = common.Stats([x["batch_s"] / (x["batch_s"] + x["step_s"]) for x in bare[v]])
        rows.append(
            [
                v,
                b.short(),
                first.short(),
                st.short(),
                f"{100 * share.median:.1f}% [{100 * min(share.values):.1f}, {100 * max(share.values):.1f}]",
                "met" if share.median < TARGET else "MISSED",
            ]
        )
        results[f"bare {v}"] = {
            "ms_per_batch": b.as_dict(),
            "ms_first_batch_of_epoch": first.as_dict(),
            "ms_per_step": st.as_dict(),
            "share": share.as_dict(),
        }
    results["bare_table"] = common.table(
        [
            "stream",
            "ms/batch (iterator, all batches)",
            "ms first batch of an epoch",
            "ms/step compute",
            "data share (no overlap)",
            "target < 5%",
        ],
        rows,
    )

    print("\n-- 2b. time in next(batch iterator) inside a Ray Train worker --")
    inw: dict[str, list[dict[str, Any]]] = {v: [] for v in WORKER_VARIANTS}
    for r in range(REPEATS):
        for i, (v, (m, mat)) in enumerate(WORKER_VARIANTS.items()):
            common.load(f"worker wait {v} repeat {r}")
            inw[v].append(worker_wait(inp, m, mat, f"{m}-{i}-{r}"))
            x = inw[v][-1]
            print(
                f"  repeat {r} {v}: waited {x['wait_s']:.1f} s of {x['total_s']:.1f} s "
                f"({100 * x['wait_s'] / x['total_s']:.1f}%), max wait {x['max_wait_s']:.2f} s",
                flush=True,
            )
    rows = []
    for v in WORKER_VARIANTS:
        share = common.Stats([x["wait_s"] / x["total_s"] for x in inw[v]])
        step = common.Stats([1000 * x["total_s"] / x["steps"] for x in inw[v]])
        mx = common.Stats([x["max_wait_s"] for x in inw[v]])
        rows.append(
            [
                v,
                f"{100 * share.median:.1f}% [{100 * min(share.values):.1f}, {100 * max(share.values):.1f}]",
                step.short(),
                mx.short(),
                "met" if share.median < TARGET else "MISSED",
            ]
        )
        results[f"worker {v}"] = {
            "share": share.as_dict(),
            "ms_per_step": step.as_dict(),
            "max_wait_s": mx.as_dict(),
        }
    results["worker_table"] = common.table(
        [
            "stream",
            "time in next() / step time",
            "ms/step (incl. wait)",
            "longest single wait s",
            "target < 5%",
        ],
        rows,
    )
    print(common.load_summary())
    common.save("data", results)


if __name__ == "__main__":
    main()
