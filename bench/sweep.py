"""Sweep efficiency: ASHA vs running every trial to the end (``pipelines.sweep.run_sweep``).

The same search space (``tune_spaces/grad_diff.yaml`` with ``SAMPLES`` trials of 20, 40 or 80 steps,
evaluation every 10 steps on 8 samples per group) and the same seed, so both schedulers draw the
same trial configurations; trials run one at a time (2 cores), each in its Tune actor (one worker). Per sweep: wall time,
training steps actually run (sum over trials of the last step each reached), trials stopped, and
the best final objective among the trials that ran to the end; then where a completed trial's wall
time goes (its ``time/*`` phases) and the share that is not the training loop. Each sweep gets a fresh workdir
(so the vanilla model's "before" evaluation is repeated in both), and both read the finished
shards and vanilla model read-only. ASHA and full alternate in every repeat (same load).

Run: ``.venv/bin/python bench/sweep.py`` (slow: minutes per sweep on 2 shared cores).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import common
import yaml

from unlearn_core.config import RunConfig, with_overrides

SAMPLES = int(os.environ.get("BENCH_SWEEP_SAMPLES", 16))
REPEATS = 2 if common.QUICK else 3
SCHEDULERS = ("asha", "none")
SPACE = Path(__file__).resolve().parent.parent / "tune_spaces" / "grad_diff.yaml"


def space_file() -> Path:
    data = yaml.safe_load(SPACE.read_text())
    data["num_samples"] = SAMPLES
    data["base"] = {**data.get("base", {}), "train.eval_every": 10, "train.eval_max_samples": 8}
    data["space"]["train.steps"] = {"choice": [20, 40, 80]}
    out = common.BENCH_DIR / "sweep_space" / "grad_diff_bench.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def one_sweep(inp: common.Inputs, space: Path, scheduler: str, tag: str) -> dict[str, Any]:
    from pipelines.sweep import run_sweep

    wd = common.BENCH_DIR / "sweeps" / tag
    shutil.rmtree(wd, ignore_errors=True)
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(wd),
            "shards": str(inp.shards),
            "model.spec": str(inp.vanilla),
            "train.torch_threads": 2,
            "tracking.log_model": False,
            "tracking.registered_model_name": f"bench-sweep-{tag}",
        },
    )
    t0 = time.perf_counter()
    out = run_sweep(
        space,
        cfg,
        num_samples=SAMPLES,
        scheduler=scheduler,
        search="random",
        max_concurrent=1,
        log=lambda *_: None,
    )
    wall = time.perf_counter() - t0
    trials = out.trials
    steps = sum(float(t.step or 0) for t in trials.values())
    done = {n: t.metrics.get("objective") for n, t in trials.items() if t.status == "completed"}
    best = min((v for v in done.values() if v is not None), default=None)
    return {
        "wall_s": wall,
        "trial_timing": list(common.trial_timings(trials).values()),
        "steps": steps,
        "completed": len(done),
        "stopped": sum(t.status == "stopped" for t in trials.values()),
        "failed": sum(t.status == "failed" for t in trials.values()),
        "best_objective": best,
        "worst_objective": max((v for v in done.values() if v is not None), default=None),
        "best_trial": min(done, key=lambda n: done[n]) if done else None,
    }


def main() -> None:
    common.header("bench/sweep.py: ASHA vs full sweep (pipelines.sweep.run_sweep)")
    inp = common.inputs()
    common.start_local_ray(2)
    space = space_file()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SCHEDULERS}
    for r in range(REPEATS):
        for s in SCHEDULERS:
            common.load(f"sweep {s} repeat {r}")
            runs[s].append(one_sweep(inp, space, s, f"{s}-{r}"))
            x = runs[s][-1]
            print(
                f"  repeat {r} {s}: {x['wall_s']:.0f} s, {x['steps']:.0f} steps, {x['completed']} completed, "
                f"{x['stopped']} stopped, {x['failed']} failed, best objective {x['best_objective']} "
                f"({x['best_trial']})",
                flush=True,
            )
    results: dict[str, Any] = {"config": {"samples": SAMPLES, "repeats": REPEATS, "space": str(space)}}
    rows, per_scheduler = scheduler_rows(runs)
    results.update(per_scheduler)
    print(f"\nmedian [min, max] over {REPEATS} repeats of {SAMPLES} trials; objective: lower is better")
    results["table"] = common.table(
        [
            "scheduler",
            "wall s",
            "wall x full",
            "training steps",
            "steps x full",
            "trials stopped early",
            "best objective",
            "best - full's best",
            "gap / abs(full's best)",
            "gap / full's spread",
            "same best trial as full",
        ],
        rows,
    )
    results["fixed_cost"] = fixed_cost_table(runs)
    print(common.load_summary())
    common.save("sweep", results)


def _paired(mine: list[dict[str, Any]], full: list[dict[str, Any]], fn: Any) -> common.Stats:
    """``fn(sweep, full sweep of the same repeat)`` over the repeats."""
    return common.Stats([fn(x, f) for x, f in zip(mine, full, strict=True)])


def _gap(x: dict[str, Any], f: dict[str, Any], scale: float = 1.0) -> float:
    return (x["best_objective"] - f["best_objective"]) / max(scale, 1e-9)


def scheduler_rows(runs: dict[str, list[dict[str, Any]]]) -> tuple[list[list[str]], dict[str, Any]]:
    """One table row per scheduler (median [min, max] over repeats, each repeat compared with the full
    sweep of the same repeat) and the same figures for the results JSON."""
    full = runs["none"]
    rows, out = [], {}
    for s in SCHEDULERS:
        mine = runs[s]
        wall = common.Stats([x["wall_s"] for x in mine])
        rel = _paired(mine, full, lambda x, f: x["wall_s"] / f["wall_s"])
        steps = common.Stats([x["steps"] for x in mine])
        steps_rel = _paired(mine, full, lambda x, f: x["steps"] / f["steps"])
        best = common.Stats([x["best_objective"] for x in mine])
        # Objectives are scores to minimise (about -2..2): the gap in objective units, relative to the
        # full sweep's best ("within 5% of the best") and to its spread (worst minus best finished trial).
        gap = _paired(mine, full, _gap)
        gap_best = _paired(mine, full, lambda x, f: _gap(x, f, abs(f["best_objective"])))
        gap_rel = _paired(mine, full, lambda x, f: _gap(x, f, f["worst_objective"] - f["best_objective"]))
        same_best = sum(x["best_trial"] == f["best_trial"] for x, f in zip(mine, full, strict=True))
        trials = sum(x["completed"] + x["stopped"] + x["failed"] for x in mine)
        rows.append(
            [
                s,
                wall.short(),
                rel.short(2),
                steps.short(),
                steps_rel.short(2),
                f"{sum(x['stopped'] for x in mine)}/{trials}",
                best.short(3),
                gap.short(3),
                gap_best.short(3),
                gap_rel.short(2),
                f"{same_best}/{len(mine)}",
            ]
        )
        out[s] = {
            "wall_s": wall.as_dict(),
            "wall_vs_full": rel.as_dict(),
            "steps": steps.as_dict(),
            "steps_vs_full": steps_rel.as_dict(),
            "best_objective": best.as_dict(),
            "best_gap_vs_full": gap.as_dict(),
            "best_gap_vs_full_best": gap_best.as_dict(),
            "best_gap_vs_full_spread": gap_rel.as_dict(),
            "runs": mine,
        }
    return rows, out


PHASES = (
    ("training loop", lambda t: t["time/stepping_s"]),
    ("Train start-up", lambda t: t["time/train_startup_s"]),
    ("export", lambda t: t["time/export_s"]),
    ("final evaluation", lambda t: t["time/eval_s"]),
    ("MLflow logging", lambda t: t["time/log_s"]),
    ("inputs + child run + report", lambda t: t["time/trial_s"] - t["time/job_s"]),
    ("actor imports (a sweep's first trial)", lambda t: t.get("time/trial_setup_s", 0.0)),
)


def fixed_cost_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Where a completed trial's wall time goes (each trial's own ``time/*`` report), and the share
    that is not the training loop: the per-trial fixed cost."""
    timings = [t for s in SCHEDULERS for x in runs[s] for t in x["trial_timing"]]
    if not timings:
        return ""
    trial = common.Stats([common.trial_wall(t) for t in timings])
    rows = [["trial (wall)", trial.short(3), "1"]]
    for name, get in PHASES:
        v = common.Stats([get(t) for t in timings])
        share = common.Stats([get(t) / common.trial_wall(t) for t in timings])
        rows.append([name, v.short(3), share.short(2)])
    fixed = common.Stats([1 - t["time/stepping_s"] / common.trial_wall(t) for t in timings])
    rows.append(["fixed cost (all but the loop)", "", f"**{fixed.short(2)}**"])
    print(f"\nper completed trial ({len(timings)} trials, both schedulers): seconds and share of the trial")
    return common.table(["phase", "seconds", "share of trial"], rows)


if __name__ == "__main__":
    main()
