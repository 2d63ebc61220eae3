"""Samples/s of our vanilla SFT step and GA step inside a real Ray Train worker vs a bare PyTorch loop.

Three loops on the same tiny model (the finished vanilla model), batch 32, 2 torch threads:

- ``bare``: hand-written PyTorch in this process: rows in memory, shuffled, ``collate`` per batch
  (the collate ``collate_shard_batch`` wraps), forward, answer-token cross-entropy (negated for GA),
  backward, clip, AdamW step;
- ``ours in-process``: the worker's own step (``build_worker_model`` + ``make_step_fn``) fed by
  the same in-memory rows and collate, no Ray: separates step-code overhead from Ray overhead;
- ``ours Ray Train``: ``pipelines.train.fit`` with a ``WorkerSpec`` on the shards (1 worker,
  ``train.torch_threads=2``); steps/s is read from the worker's own ``steps_per_s`` reports between
  step 10 and the last step (start-up and the first 10 steps excluded).

The earlier fix checks (controller poll 0.25 s, materialized small streams, the worker's epoch
cache) are the pipeline's defaults now; the variant measured beside it turns off the batch-prefetch
thread (``train.prefetch_batches=0``).

The two in-process loops run inside a 1-CPU Ray task: Ray starts every worker process with nice 15,
so on a shared machine a loop in the (nice 0) driver would get more CPU than the RayTrainWorker and
the comparison would measure the scheduler. The three loops of one mode run back to back in every
repeat (same load). Afterwards one more
Ray Train run per mode is profiled with py-spy (all threads of the RayTrainWorker, idle frames
kept) to show where the worker's main thread spends its time.

Run: ``.venv/bin/python bench/train_step.py`` (``BENCH_QUICK=1``: fewer steps and repeats).
"""

from __future__ import annotations

import math
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common
import torch

from pipelines.shards import rows_with_images, stream_dataset
from unlearn_core.config import RunConfig, with_overrides
from unlearn_core.data.encode import collate
from unlearn_core.models.loading import load_model_and_processor
from unlearn_core.training.worker import build_worker_model, make_step_fn

BATCH = 32
THREADS = 2
RAY_STEPS = 30 if common.QUICK else 60
INPROC_STEPS = 12 if common.QUICK else 30
WARMUP = 3
REPEATS = 3
PROFILE_SECONDS = 20 if common.QUICK else 40
TARGET = 0.90  # ours >= 90% of bare
MODES = common.STEP_MODES
# Per mode: the Ray Train variants measured next to the bare and in-process loops (label, ray_fit kwargs).
RAY_VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "sft": [
        ("ours Ray Train (as the pipeline)", {}),
        ("  without batch prefetch", {"prefetch": 0}),
        ("  with length-grouped batches", {"group_by_length": True}),  # finetune.yaml's default
    ],
    "ga": [("ours Ray Train (as the pipeline)", {}), ("  without batch prefetch", {"prefetch": 0})],
}
AS_PIPELINE = "ours Ray Train (as the pipeline)"


def run_cfg(inp: common.Inputs, mode: str, steps: int) -> RunConfig:
    return common.step_config(
        inp, mode, steps, batch=BATCH, threads=THREADS, **{"train.checkpoint_every": 0, "train.eval_every": 0}
    )


def dataset(inp: common.Inputs, mode: str, cfg: RunConfig):
    _, stream, _ = MODES[mode]
    weights = cfg.train.task_weights if stream == "train" else None
    return stream, stream_dataset(inp.shards, stream, task_weights=weights)


def batch_sizes(n_rows: int) -> list[int]:
    full, rest = divmod(n_rows, BATCH)
    return [BATCH] * full + ([rest] if rest else [])


# -- in-process loops --------------------------------------------------------------------------
def epochs(rows: list[dict[str, Any]], processor: Any, seed: int):
    """Endless collated batches, reshuffled every epoch, last batch partial (like drop_last=False)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in range(0, len(order), BATCH):
            yield collate(rows_with_images([rows[j] for j in order[i : i + BATCH]]), processor)


def in_ray_task(fn, *args: Any) -> Any:
    """Run an in-process loop in a 1-CPU Ray task: the same process kind and niceness (Ray starts its
    workers with nice 15) as the RayTrainWorker, so a shared machine's load hits both alike."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(fn).remote(*args))


def bare_loop(inp: common.Inputs, rows: list[dict[str, Any]], sign: float, steps: int) -> float:
    """Hand-written PyTorch; returns samples/s over ``steps`` steps after ``WARMUP``."""
    from unlearn_core.config import ModelConfig

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model, processor = load_model_and_processor(str(inp.vanilla), ModelConfig(spec=str(inp.vanilla)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    it = epochs(rows, processor, seed=0)
    n = 0
    t0 = 0.0
    for step in range(WARMUP + steps):
        if step == WARMUP:
            t0, n = time.perf_counter(), 0
        b = next(it)
        opt.zero_grad(set_to_none=True)
        (sign * common.next_token_loss(model, b)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        n += b["input_ids"].shape[0]
    return n / (time.perf_counter() - t0)


def ours_inprocess(inp: common.Inputs, mode: str, rows: list[dict[str, Any]], steps: int) -> float:
    """The worker's own model build and step function, fed from memory; samples/s."""
    torch.set_num_threads(THREADS)
    job_mode, stream, _ = MODES[mode]
    cfg = run_cfg(inp, mode, WARMUP + steps)
    built = build_worker_model(cfg, job_mode, str(inp.vanilla), str(inp.vanilla), inp.image_size)
    model = built.model
    opt = built.make_optimizer(model)
    sizes: list[int] = []

    def counted():
        for b in epochs(rows, built.processor, seed=0):
            sizes.append(int(b["input_ids"].shape[0]))
            yield b

    step_fn = make_step_fn(built, model, opt, {stream: counted()}, cfg.train)
    t0 = 0.0
    for step in range(WARMUP + steps):
        if step == WARMUP:
            t0 = time.perf_counter()
        step_fn(step)
    return sum(sizes[WARMUP:]) / (time.perf_counter() - t0)


# -- Ray Train ---------------------------------------------------------------------------------
def ray_fit(
    inp: common.Inputs,
    mode: str,
    steps: int,
    tag: str,
    n_rows: int,
    *,
    prefetch: int | None = None,
    group_by_length: bool = False,
) -> dict[str, Any]:
    """``pipelines.train.fit`` as the pipeline calls it; ``prefetch`` overrides ``train.prefetch_batches``,
    ``group_by_length`` sets ``train.group_by_length`` (the same rows per step, less padding)."""
    job_mode, _, _ = MODES[mode]
    cfg = with_overrides(run_cfg(inp, mode, steps), {"train.group_by_length": group_by_length})
    if prefetch is not None:
        cfg = with_overrides(cfg, {"train.prefetch_batches": prefetch})
    stream, ds = dataset(inp, mode, cfg)
    wall = common.fit_logged(inp, cfg, job_mode, {stream: ds}, f"train_step-{tag}")
    reports = common.read_reports(common.report_log(f"train_step-{tag}"))
    rate, a, b = common.steady_rate(reports)
    sizes = batch_sizes(n_rows)
    samples = sum(sizes[i % len(sizes)] for i in range(a, b))
    return {"steps_per_s": rate, "samples_per_s": rate * samples / (b - a), "window": (a, b), "wall_s": wall}


def take_stream_rows(inp: common.Inputs, mode: str) -> list[dict[str, Any]]:
    cfg = run_cfg(inp, mode, 1)
    _, ds = dataset(inp, mode, cfg)
    return ds.take_all()


# -- profiling ---------------------------------------------------------------------------------
CATEGORIES = (  # (label, substrings of a frame; the first category whose marker is on the stack wins)
    ("ray.train.report", ("report (ray/train", "report (pipelines/train/trainer.py")),
    (
        "data: next(batch iterator)",
        ("<genexpr> (pipelines/train/trainer.py", "cycle (unlearn_core/training/loop.py"),
    ),
    (
        "optimizer step + clip",
        (
            "clip_grad_norm_",
            "clip_and_step",
            "optimizer_step (",
            "step (torch/optim",
            "adamw (torch/optim",
            "_apply_lr_schedule",
        ),
    ),
    ("backward", ("backward (torch/_tensor.py", "backward (torch/autograd")),
    ("forward + loss", ("forward_logits (", "nll (unlearn_core", "_wrapped_call_impl")),
)
SUB = {
    "data: next(batch iterator)": (
        ("  collate_shard_batch (in the training thread)", ("collate_shard_batch",)),
        ("  waiting on Ray Data (new epoch's execution / block queue)", ("ray/data",)),
    ),
    "ray.train.report": (
        ("  blocked in Queue.put until the controller polls (queue size 1)", ("Queue.put",)),
        ("  checkpoint-dir sync across ranks (ray.get)", ("_sync_checkpoint_dir_name",)),
    ),
}


IDLE_LEAVES = (
    "Condition.wait",
    "Event.wait",
    "Semaphore.acquire",
    "Queue.get",
    "Queue.put",
    "sleep",
    "select",
    "poll",
    "main_loop",
    "_monitor_target",
    "TMonitor.run",
    "Thread.join",
    "get_objects",
    "_wait_for",
    "wait (",
)


def classify(frames: list[str], cats, default: str = "other") -> str:
    for label, markers in cats:
        if any(m in f for f in frames for m in markers):
            return label
    return default


def profile_breakdown(raw: Path) -> dict[str, Any]:
    stacks = common.read_collapsed(raw)
    main = [(f, c) for f, c in stacks if any("train_worker (pipelines/train/trainer.py" in x for x in f)]
    main_tid = Counter(f[0] for f, c in main).most_common(1)[0][0] if main else None
    main_total = sum(c for f, c in stacks if f[0] == main_tid)
    cats: Counter[str] = Counter()
    sub: Counter[tuple[str, str]] = Counter()
    for frames, c in stacks:
        if frames[0] != main_tid:
            continue
        cat = classify(frames, CATEGORIES)
        if cat == "other" and not any("run_loop" in f for f in frames):
            cat = "outside the step loop (start-up / idle)"
        cats[cat] += c
        if cat in SUB:
            sub[(cat, classify(frames, SUB[cat], "  (rest)"))] += c
    # Other threads of the worker: samples where they are busy (leaf frame not a wait), per thread name.
    threads: Counter[str] = Counter()
    collate_elsewhere = 0
    for frames, c in stacks:
        if frames[0] == main_tid or len(frames) < 2 or any(w in frames[-1] for w in IDLE_LEAVES):
            continue
        name = frames[0].split(":", 1)[1].strip() if ":" in frames[0] else frames[0]
        threads[name] += c
        if any("collate_shard_batch" in f for f in frames):
            collate_elsewhere += c
    return {
        "main_samples": main_total,
        "main": dict(cats),
        "sub": {f"{a}|{b}": c for (a, b), c in sub.items()},
        "other_threads": dict(threads.most_common(4)),
        "collate_other_threads": collate_elsewhere,
    }


def profile_ray(inp: common.Inputs, mode: str, steps: int) -> dict[str, Any]:
    """One longer Ray Train run with py-spy attached to the worker once the first report is in.

    ``steps`` is sized from the measured rate so the run outlasts both recordings."""
    job_mode, _, _ = MODES[mode]
    cfg = run_cfg(inp, mode, steps)
    stream, ds = dataset(inp, mode, cfg)
    log = common.report_log(f"train_step-profile-{mode}")
    th = threading.Thread(
        target=lambda: common.fit_logged(inp, cfg, job_mode, {stream: ds}, f"train_step-profile-{mode}"),
        daemon=True,
    )
    th.start()
    while th.is_alive() and not common.read_reports(log):
        time.sleep(1)
    pids = common.ray_descendants("RayTrainWorker")
    if not pids:
        raise RuntimeError("no RayTrainWorker process found under this driver")
    raw = common.BENCH_DIR / "profiles" / f"train_step-{mode}.raw"
    svg = common.BENCH_DIR / "profiles" / f"train_step-{mode}.svg"
    common.load(f"py-spy on the Ray worker ({mode}, pid {pids[0]})")
    proc = common.pyspy_record(pids[0], PROFILE_SECONDS, raw)
    _, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
    if th.is_alive():  # a flame graph for people, from the same run
        subprocess.run(
            [
                common.pyspy_bin(),
                "record",
                "--pid",
                str(pids[0]),
                "--duration",
                "10",
                "--rate",
                "50",
                "--nonblocking",
                "-o",
                str(svg),
            ],
            capture_output=True,
            check=False,
        )
    th.join()
    out = profile_breakdown(raw)
    out.update({"raw": str(raw), "svg": str(svg) if svg.exists() else None, "pid": pids[0], "steps": steps})
    return out


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    torch.set_num_threads(THREADS)
    common.header("bench/train_step.py: our SFT / GA step in a Ray Train worker vs bare PyTorch")
    inp = common.inputs()
    common.start_local_ray(2)
    results: dict[str, Any] = {
        "config": {
            "batch": BATCH,
            "threads": THREADS,
            "ray_steps": RAY_STEPS,
            "inproc_steps": INPROC_STEPS,
            "repeats": REPEATS,
        }
    }
    import ray

    rows_by_mode = {m: take_stream_rows(inp, m) for m in MODES}
    for m, rows in rows_by_mode.items():
        print(f"{m}: {len(rows)} rows in the stream, {len(batch_sizes(len(rows)))} batches per epoch")
    row_refs = {m: ray.put(rows) for m, rows in rows_by_mode.items()}
    loops = {m: ["bare PyTorch", "ours in-process (no Ray)", *(v for v, _ in RAY_VARIANTS[m])] for m in MODES}
    runs: dict[str, dict[str, list[float]]] = {m: {v: [] for v in loops[m]} for m in MODES}
    for r in range(REPEATS):
        for m in MODES:
            rows = rows_by_mode[m]
            sign = 1.0 if m == "sft" else -1.0
            common.load(f"repeat {r} {m} bare")
            runs[m]["bare PyTorch"].append(in_ray_task(bare_loop, inp, row_refs[m], sign, INPROC_STEPS))
            common.load(f"repeat {r} {m} ours in-process")
            runs[m]["ours in-process (no Ray)"].append(
                in_ray_task(ours_inprocess, inp, m, row_refs[m], INPROC_STEPS)
            )
            for i, (label, kw) in enumerate(RAY_VARIANTS[m]):
                common.load(f"repeat {r} {m} {label.strip()}")
                res = ray_fit(inp, m, RAY_STEPS, f"{m}-{r}-{i}", len(rows), **kw)
                runs[m][label].append(res["samples_per_s"])
            print(
                f"  repeat {r} {m}: "
                + ", ".join(f"{v.strip()} {runs[m][v][-1]:.1f}" for v in loops[m])
                + " samples/s",
                flush=True,
            )
    rows_out = []
    for m in MODES:
        bare = runs[m]["bare PyTorch"]
        for v in loops[m]:
            st = common.Stats(runs[m][v])
            ratio = common.Stats([a / b for a, b in zip(runs[m][v], bare, strict=True)])
            verdict = ("met" if ratio.median >= TARGET else "MISSED") if v == AS_PIPELINE else ""
            rows_out.append([m, v, st.short(), ratio.short(2), verdict])
            results[f"{m}: {v.strip()}"] = {"samples_per_s": st.as_dict(), "over_bare": ratio.as_dict()}
    print(
        f"\nsamples/s, median [min, max] over {REPEATS} repeats; x bare per repeat (same repeat = same load)"
    )
    results["table"] = common.table(["step", "loop", "samples/s", "x bare", "target >= 0.90x bare"], rows_out)

    prof_rows = []
    for m in MODES:
        if results[f"{m}: {AS_PIPELINE}"]["over_bare"]["median"] >= TARGET:
            continue
        print(f"\nprofiling the Ray Train worker ({m}, as the pipeline) with py-spy ...", flush=True)
        steps_per_s = results[f"{m}: {AS_PIPELINE}"]["samples_per_s"]["median"] / BATCH
        prof = profile_ray(inp, m, 10 + math.ceil(steps_per_s * (PROFILE_SECONDS + 30)))
        results[f"profile_{m}"] = prof
        total = max(1, prof["main_samples"])
        for cat, c in sorted(prof["main"].items(), key=lambda kv: -kv[1]):
            prof_rows.append([m, cat, f"{100 * c / total:.1f}%"])
            for key, sc in sorted(prof["sub"].items(), key=lambda kv: -kv[1]):
                parent, label = key.split("|", 1)
                if parent == cat:
                    prof_rows.append([m, label, f"{100 * sc / total:.1f}%"])
        for name, c in prof["other_threads"].items():
            prof_rows.append([m, f"(busy in another thread: {name})", f"{100 * c / total:.1f}%"])
        print(f"flame graph: {prof['svg']}; raw stacks: {prof['raw']}")
    if prof_rows:
        print("\nwhere the RayTrainWorker's main thread spends its wall time (py-spy, idle frames kept)")
        results["profile_table"] = common.table(["step", "where", "share of main-thread samples"], prof_rows)
    print(common.load_summary())
    common.save("train_step", results)


if __name__ == "__main__":
    main()
