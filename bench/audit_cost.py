"""What `unlearn audit` costs after `make run`: the retrained reference, each check on the reference and
on the audited model, cold (no reference yet) and cached (the reference and its side of the attacks kept).

The issue's targets on a 2-core machine: <= 10 min for one audit including the reference's training,
<= 4 min once the reference is cached. The workdir is copied (records, shards) into ``$BENCH_DIR`` so
the cold run trains its own reference; the audited model is ``$AUDIT_MODEL`` (a model folder of the
source workdir, e.g. the demo champion's ``models/sweeps/...`` or a pulled ``models:/`` copy).

Run: ``AUDIT_MODEL=<model folder> BENCH_SRC=<make run's workdir> .venv/bin/python bench/audit_cost.py``
(``BENCH_QUICK=1``: the cached audit only, on ``BENCH_SRC`` itself, which then needs its reference).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import common

from unlearn_core.audit import CHECKS


def _copy_workdir(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for sub in ("records", "shards"):
        shutil.copytree(src / sub, dst / sub)
    return dst


def _audit(model: Path, workdir: Path) -> dict[str, Any]:
    from pipelines.audit import audit_config, run_audit

    t0 = time.perf_counter()
    report = run_audit(model, audit_config(workdir), log=lambda m: print(f"  {m}", flush=True), table=False)
    report["seconds"]["wall"] = time.perf_counter() - t0
    return report


def main() -> None:
    meta = common.header("unlearn audit: cost per check (cold: reference trained; cached)")
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from pipelines.ray_env import ensure_ray

    ensure_ray(num_cpus=2)
    src = Path(os.environ.get("BENCH_SRC", "workdir")).resolve()
    model = Path(os.environ["AUDIT_MODEL"]).resolve()
    runs: dict[str, dict[str, Any]] = {}
    workdir = src
    if not common.QUICK:
        workdir = _copy_workdir(src, common.BENCH_DIR / "audit-wd")
        common.load("cold audit")
        runs["cold"] = _audit(model, workdir)
    common.load("cached audit")
    runs["cached"] = _audit(model, workdir)
    rows = []
    for check in ("plain", *CHECKS):
        cells = [check]
        for name in ("cold", "cached"):
            sec = runs.get(name, {}).get("seconds", {})
            cells += [f"{sec.get(f'reference.{check}', 0):.1f}" if name == "cold" else "cached",
                      f"{sec.get(f'model.{check}', float('nan')):.1f}"]  # fmt: skip
        rows.append(cells)
    for name, label in (
        ("reference_training_or_lookup", "reference training (cold) / lookup"),
        ("wall", "total wall"),
    ):
        rows.append([label, *[f"{runs[r]['seconds'].get(name, float('nan')):.1f}" if r in runs else "-" for r in ("cold",)],
                     "", *[f"{runs['cached']['seconds'].get(name, float('nan')):.1f}", ""]])  # fmt: skip
    common.table(
        ["check", "cold: reference s", "cold: model s", "cached: reference", "cached: model s"], rows
    )
    targets = []
    if "cold" in runs:
        targets.append(f"cold {runs['cold']['seconds']['wall']:.0f} s (target <= 600 s)")
    targets.append(f"cached {runs['cached']['seconds']['wall']:.0f} s (target <= 240 s)")
    print("; ".join(targets))
    print(common.load_summary())
    common.save(
        "audit_cost",
        {
            **meta,
            "model": str(model),
            "runs": {k: {"seconds": v["seconds"], "pass": v["pass"]} for k, v in runs.items()},
        },
    )


if __name__ == "__main__":
    main()
