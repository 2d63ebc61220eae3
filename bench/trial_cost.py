"""Per-trial fixed cost of the demo's PUBG sweep: where a trial's wall time goes.

The sweep ``make run`` runs (``tune_spaces/pubg.yaml``: PUBG trials of 20-80 steps, evaluation every 10
steps on 8 samples per group, a final evaluation on 32 per group), every trial to the end, one at a
time, in a fresh workdir that starts with the source workdir's PUBG teacher cache (as in ``make run``,
where the teacher answers are computed once before the sweep). Each trial reports its own ``time/*``
phases; the table gives each phase's seconds and share of the trial, and two fixed-cost shares:
everything but the training loop, and the infrastructure alone (also without the final evaluation's
generation, which is evaluation work that grows with the sample, not start-up).

The same sweep runs twice, one after the other: with Ray Train trials (``train.launcher=ray_train``:
a ``TorchTrainer`` per trial) and with the default (``auto``: one-worker trials run in their own Tune
actor, which the sweep reuses).

Run: ``BENCH_SRC=<finished workdir> .venv/bin/python bench/trial_cost.py`` (``BENCH_QUICK=1``: the
demo's 2 trials; default 4; ``BENCH_LAUNCHERS=auto``: only the default).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import common

from unlearn_core.config import RunConfig, with_overrides

TRIALS = 2 if common.QUICK else 4
# Ray Train trials (a TorchTrainer each) vs the default, in-process trials for one worker;
# BENCH_LAUNCHERS=auto runs the default alone.
LAUNCHERS = tuple(os.environ.get("BENCH_LAUNCHERS", "ray_train,auto").split(","))
SPACE = Path(__file__).resolve().parent.parent / "tune_spaces" / "pubg.yaml"


PHASES = (
    ("training loop (steps + in-training evaluations)", lambda t: t["time/stepping_s"]),
    (
        "trial actor set-up (imports; once per actor, which in-process sweeps reuse)",
        lambda t: t.get("time/trial_setup_s", 0.0),
    ),
    (
        "training start-up (Ray Train's actors, or in process: model, data, last checkpoint)",
        lambda t: t["time/train_startup_s"],
    ),
    ("final evaluation (generation in the workers + scoring)", lambda t: t["time/eval_s"]),
    ("export", lambda t: t["time/export_s"]),
    ("MLflow logging", lambda t: t["time/log_s"]),
    (
        "inputs (teacher cache, saliency mask: cached, or computed)",
        lambda t: t.get("time/trial_inputs_s", 0.0),
    ),
    ("training streams read (Ray Data, materialized)", lambda t: t.get("time/trial_streams_s", 0.0)),
    ("MLflow child run", lambda t: t.get("time/trial_run_s", 0.0)),
    (
        "the rest (resolved params, evaluation rows, Tune report)",
        lambda t: (
            t["time/trial_s"]
            - t["time/job_s"]
            - sum(t.get(k, 0.0) for k in ("time/trial_inputs_s", "time/trial_streams_s", "time/trial_run_s"))
        ),
    ),
)


def run(inp: common.Inputs, launcher: str) -> dict[str, Any]:
    from pipelines.sweep import run_sweep

    wd = common.BENCH_DIR / f"trial_cost-{launcher}"
    shutil.rmtree(wd, ignore_errors=True)
    if (common.BENCH_SRC / "teacher").is_dir():
        shutil.copytree(common.BENCH_SRC / "teacher", wd / "teacher")
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(wd),
            "method.name": "pubg",
            "shards": str(inp.shards),
            "model.spec": str(inp.vanilla),
            "tracking.log_model": False,
            "tracking.registered_model_name": "bench-trial-cost",
            "train.launcher": launcher,
        },
    )
    t0 = time.perf_counter()
    out = run_sweep(SPACE, cfg, num_samples=TRIALS, scheduler="none", max_concurrent=1, log=lambda *_: None)
    return {"wall_s": time.perf_counter() - t0, "trials": out.trials}


def phase_table(timings: list[dict[str, float]]) -> str:
    trial = common.Stats([common.trial_wall(t) for t in timings])
    rows = [["trial (wall)", trial.short(3), "1"]]
    for name, get in PHASES:
        rows.append(
            [
                name,
                common.Stats([get(t) for t in timings]).short(3),
                common.Stats([get(t) / common.trial_wall(t) for t in timings]).short(2),
            ]
        )
    not_loop = common.Stats([1 - t["time/stepping_s"] / common.trial_wall(t) for t in timings])
    infra = common.Stats(
        [1 - (t["time/stepping_s"] + t["time/eval_s"]) / common.trial_wall(t) for t in timings]
    )
    rows.append(["fixed cost: all but the loop", "", f"**{not_loop.short(2)}**"])
    rows.append(["fixed cost: all but the loop and the final evaluation", "", f"**{infra.short(2)}**"])
    return common.table(["phase", "seconds", "share of trial"], rows)


def report(launcher: str, out: dict[str, Any]) -> tuple[list[dict[str, float]], str]:
    """Print one sweep's trials and phase table; returns the completed trials' timings and the table."""
    trials = out["trials"]
    by_trial = common.trial_timings(trials)
    timings = list(by_trial.values())
    print(
        f"train.launcher={launcher}: sweep wall {out['wall_s']:.0f} s, {len(timings)}/{len(trials)} trials completed"
    )
    for name, t in sorted(trials.items()):
        steps = t.step
        timing = by_trial.get(name)
        if not timing:
            print(f"  {name}: {t.status}")
            continue
        loop, total = timing["time/stepping_s"], common.trial_wall(timing)
        made = timing.get("time/trial_inputs_s", 0.0)  # teacher cache / mask, when this trial computed them
        setup = timing.get("time/trial_setup_s", 0.0)
        print(
            f"  {name}: {t.status}, {steps:.0f} steps, trial {total:.1f} s, loop {loop:.1f} s; "
            f"fixed cost {1 - loop / total:.0%} of the trial; without the actor's imports "
            f"({setup:.1f} s) and the inputs it prepared ({made:.1f} s): "
            f"{1 - loop / (total - setup - made):.0%}"
        )
    table = phase_table(timings) if timings else "(no completed trial)"  # printed by common.table
    return timings, table


def main() -> None:
    """The same sweep with Ray Train trials and with in-process trials (the default), one after the other."""
    common.header(f"bench/trial_cost.py: per-trial fixed cost of the demo's PUBG sweep ({TRIALS} trials)")
    inp = common.inputs()
    common.start_local_ray(2)
    common.load("trial cost")
    saved: dict[str, Any] = {}
    for launcher in LAUNCHERS:
        out = run(inp, launcher)
        timings, table = report(launcher, out)
        saved[launcher] = {"wall_s": out["wall_s"], "timings": timings, "table": table}
        common.load(f"after {launcher}")
    if len(saved) == 2:
        a, b = (saved[k]["wall_s"] for k in LAUNCHERS)
        print(f"sweep wall: {LAUNCHERS[1]} / {LAUNCHERS[0]} = {b / a:.2f} ({b:.0f} s / {a:.0f} s)")
    print(common.load_summary())
    common.save("trial_cost", saved)


if __name__ == "__main__":
    main()
