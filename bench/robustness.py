"""Which relearning-resistant option moves which audit check (docs/audit.md: what the audit finds):
each configuration is an `unlearn run` followed by an `unlearn audit` of its model, every figure read
back from their own JSON.

Run (in a worktree whose workdir has the vanilla model, after `make run`)::

    .venv/bin/python bench/robustness.py run --workdir workdir --configs pubg,pubg_sam --seeds 0,1
    .venv/bin/python bench/robustness.py table --workdir workdir [--out docs/robustness_pareto.png] \
        [--sweeps sweep-pubg_robust-XXXX,...]   # add the audited trials of `unlearn sweep --audit` runs

``run`` runs each (configuration, seed) as its own process under the machine's heavy-work lock
(``flock /tmp/lvlm-heavy.lock``: one configuration at a time, so other work on a shared machine
interleaves between them): the ``unlearn run`` and the ``unlearn audit`` of its model, then one record
appended to ``WORKDIR/robustness/runs.jsonl``: both command lines, the run's MLflow id, its model
folder, evaluation JSON and audit JSON. A (configuration, seed) already recorded with the same
overrides is skipped. ``table`` prints the output-level targets and the
audit checks of every record, draws output quality against robustness (a Pareto plot) and logs both to
MLflow as a run of its own (``tags.job = robustness``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOCK = os.environ.get("HEAVY_LOCK", "/tmp/lvlm-heavy.lock")
UNLEARN = str(REPO / ".venv" / "bin" / "unlearn")

# name -> (method, --set overrides). The hand-tuned PUBG run is the demo's start point
# (tune_spaces/pubg.yaml); NPO's the demo baseline (40 steps).
PUBG = {"method.params.w_ga": 0.02, "method.params.w_bg": 1.0, "method.params.w_ret": 1.0,
        "train.lr": 5e-4, "train.steps": 60}  # fmt: skip
NPO = {"train.steps": 40}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "pubg": ("pubg", PUBG),
    "pubg_sam": ("pubg", {**PUBG, "method.params.sam_rho": 0.05}),
    "pubg_rs": ("pubg", {**PUBG, "method.params.rs_sigma": 0.01}),
    "pubg_tar": ("pubg", {**PUBG, "method.params.tar_steps": 2}),
    "npo": ("npo", NPO),
    "npo_sam": ("npo", {**NPO, "method.params.sam_rho": 0.05}),
    "npo_rs": ("npo", {**NPO, "method.params.rs_sigma": 0.01}),
    "npo_tar": ("npo", {**NPO, "method.params.tar_steps": 2}),
    "pubg_npo": ("pubg", {**PUBG, "method.params.forget_term": "npo", "method.params.w_ga": 1.0}),
    "pubg_tar_benign": ("pubg", {**PUBG, "method.params.tar_steps": 2, "method.params.tar_attack": "retain"}),
    "npo_tar_benign": ("npo", {**NPO, "method.params.tar_steps": 2, "method.params.tar_attack": "retain"}),
    # no ascent at all: the guidance KL and the retain NLL alone (does the forget term set the rows apart?)
    "pubg_bg_only": ("pubg", {**PUBG, "method.params.w_ga": 0.0}),
    # half the steps: the forget rows' likelihood falls through the reference's level on the way
    "pubg_short": ("pubg", {**PUBG, "train.steps": 30}),
}
# Targets of the project (the champion rule, pipelines/sweep/champion.py)
TARGETS = (
    ("forget.leak_rate", "<=", 0.0),
    ("forget_unseen.leak_rate", "<=", 0.0),
    ("quality.hallucination", "<=", 0.10),
    ("quality.refusal_rate", "<=", 0.05),
    ("quality.degeneracy_rate", "<=", 0.02),
)
CHECKS = ("membership", "quantization", "relearn", "benign", "probes")


def runs_file(workdir: Path) -> Path:
    return workdir / "robustness" / "runs.jsonl"


def read_runs(workdir: Path) -> list[dict[str, Any]]:
    path = runs_file(workdir)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged(cmd: list[str], log: Path) -> str:
    """Run ``cmd``; its output goes to ``log`` and is returned."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(cmd)}   (log {log})", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    text = log.read_text()
    if rc != 0:
        raise SystemExit(f"failed (exit {rc}) after {time.perf_counter() - t0:.0f} s: see {log}")
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return text


def run_one(workdir: Path, name: str, seed: int, extra: dict[str, Any]) -> dict[str, Any]:
    method, sets = CONFIGS[name]
    overrides = {**sets, **extra, "train.seed": seed, "tracking.log_model": "false"}
    run_cmd = [UNLEARN, "run", "--method", method, "--workdir", str(workdir)]
    for k, v in overrides.items():
        run_cmd += ["--set", f"{k}={v}"]
    logs = workdir / "robustness" / "logs"
    out = logged(run_cmd, logs / f"{name}-s{seed}-run.log")
    run_id = re.findall(r"MLflow run ([0-9a-f]{32})", out)[-1]
    model_dir = workdir / "models" / f"{method}-{run_id[:8]}"
    eval_json = workdir / "results" / f"eval-{method}-{run_id[:8]}.json"
    audit_cmd = [UNLEARN, "audit", "--model", str(model_dir), "--workdir", str(workdir)]
    out = logged(audit_cmd, logs / f"{name}-s{seed}-audit.log")
    audit_json = re.findall(r"audit report: (\S+\.json)", out)[-1]
    return {
        "name": name,
        "seed": seed,
        "method": method,
        "overrides": overrides,
        "run_command": shlex.join(run_cmd),
        "audit_command": shlex.join(audit_cmd),
        "run_id": run_id,
        "model_dir": str(model_dir),
        "eval_json": str(eval_json),
        "audit_json": audit_json,
    }


def cmd_run(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir).resolve()
    extra = dict(s.split("=", 1) for s in args.set or [])
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.configs.split(","):
            done = {
                (r["name"], r["seed"], json.dumps(r["overrides"], sort_keys=True)) for r in read_runs(workdir)
            }
            _, sets = CONFIGS[name]
            key = json.dumps(
                {**sets, **extra, "train.seed": seed, "tracking.log_model": "false"}, sort_keys=True
            )
            if (name, seed, key) in done:
                print(f"[recorded] {name} seed {seed}")
                continue
            one = [
                sys.executable,
                __file__,
                "one",
                "--workdir",
                str(workdir),
                "--config",
                name,
                "--seed",
                str(seed),
            ]
            one += [a for kv in (args.set or []) for a in ("--set", kv)]
            print(f"[queued on {LOCK}] {name} seed {seed}", flush=True)
            if subprocess.call(["flock", LOCK, *one], cwd=REPO) != 0:
                raise SystemExit(f"{name} seed {seed} failed")


def cmd_one(args: argparse.Namespace) -> None:
    """One (configuration, seed): its run and audit, the record appended (``run`` calls this under the lock)."""
    workdir = Path(args.workdir).resolve()
    record = run_one(workdir, args.config, args.seed, dict(s.split("=", 1) for s in args.set or []))
    runs_file(workdir).parent.mkdir(parents=True, exist_ok=True)
    with runs_file(workdir).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------- table
def _load(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    metrics = record.get("metrics") or json.loads(Path(record["eval_json"]).read_text())["metrics"]
    audit = json.loads(Path(record["audit_json"]).read_text())
    return metrics, audit


def sweep_records(workdir: Path, sweeps: list[str]) -> list[dict[str, Any]]:
    """The audited trials of ``unlearn sweep --audit`` runs (folder names under WORKDIR/ray_results), as
    records like ``run``'s: the audit JSON whose model is the trial's, the trial's final evaluation from
    its last Tune result (``values_json``), the sweep's seed."""
    if not sweeps:
        return []
    audited = [  # (audit JSON, audited model folder), each report read once
        (path, Path(json.loads(path.read_text())["model"]["dir"]))
        for path in sorted((workdir / "audit").glob("audit-*.json"))
    ]
    out = []
    for name in sweeps:
        sweep_dir = workdir / "ray_results" / name
        seed = json.loads((sweep_dir / "sweep.json").read_text())["cfg"]["train"]["seed"]
        for path, model in audited:
            if model.parent.name != name:
                continue
            last = (sweep_dir / model.name / "result.json").read_text().splitlines()[-1]
            metrics = json.loads(json.loads(last)["values_json"])
            out.append({"name": f"{name.removeprefix('sweep-').rsplit('-', 1)[0]} {model.name}", "seed": seed,
                        "metrics": metrics, "audit_json": str(path)})  # fmt: skip
    return out


def vanilla_metrics(workdir: Path) -> dict[str, float]:
    """The vanilla model's final evaluation (the fine-tune's, kept as the starting model's)."""
    path = workdir / "results" / "eval-vanilla.json"
    return json.loads(path.read_text())["metrics"]


def output_targets(m: dict[str, float], vanilla: dict[str, float]) -> dict[str, bool]:
    ok = {name: m.get(name, float("inf")) <= bound + 1e-12 for name, _, bound in TARGETS}
    ok["retain.vqa_acc"] = m.get("retain.vqa_acc", 0.0) >= 0.95 * vanilla["retain.vqa_acc"] - 1e-12
    ok["quality.informativeness"] = (
        m.get("quality.informativeness", 0.0) >= 0.8 * vanilla["guided_forget.informativeness"] - 1e-12
    )
    return ok


def robustness_figures(audit: dict[str, Any]) -> dict[str, float | None]:
    checks = audit["checks"]
    return {
        "membership_max_abs_gap": checks["membership"]["levels"]["image"].get("max_abs_gap")
        if "membership" in checks
        else None,
        "membership_person_max_abs_gap": checks["membership"]["levels"]["person"].get("max_abs_gap")
        if "membership" in checks
        else None,
        "relearn_max_leak_gap": checks.get("relearn", {}).get("max_leak_gap"),
        "relearn_max_identity_gap": checks.get("relearn", {}).get("max_identity_gap"),
        "benign_max_gap": checks.get("benign", {}).get("max_gap"),
        "quantization_max_rise": checks.get("quantization", {}).get("max_rise"),
        "probes_max_gap": checks.get("probes", {}).get("max_gap"),
    }


def _cell(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def cmd_table(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir).resolve()
    records = read_runs(workdir) + sweep_records(workdir, [x for x in (args.sweeps or "").split(",") if x])
    if not records:
        raise SystemExit(f"no records in {runs_file(workdir)}: run `bench/robustness.py run` first")
    vanilla = vanilla_metrics(workdir)
    out_cols = ("forget.leak_rate", "forget_unseen.leak_rate", "retain.vqa_acc", "quality.informativeness",
                "quality.hallucination", "quality.refusal_rate", "quality.degeneracy_rate")  # fmt: skip
    rob_cols = ("membership_max_abs_gap", "membership_person_max_abs_gap", "relearn_max_leak_gap",
                "relearn_max_identity_gap", "benign_max_gap", "quantization_max_rise", "probes_max_gap")  # fmt: skip
    head = ["config", "seed", *out_cols, "targets", *rob_cols, *CHECKS, "audit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    points = []
    for r in records:
        m, audit = _load(r)
        targets = output_targets(m, vanilla)
        fig = robustness_figures(audit)
        status = [audit["checks"].get(c, {}).get("status", "-") for c in CHECKS]
        n_pass = sum(s == "pass" for s in status)
        row = [r["name"], str(r["seed"]), *(_cell(m.get(c)) for c in out_cols),
               "all met" if all(targets.values()) else "missed: " + ", ".join(k for k, v in targets.items() if not v),
               *(_cell(fig[c]) for c in rob_cols), *status, "PASS" if audit["pass"] else "fail"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
        points.append(
            (r["name"], r["seed"], m.get("quality.informativeness", 0.0), n_pass, all(targets.values()),
             fig["membership_person_max_abs_gap"])
        )  # fmt: skip
    text = "\n".join(lines)
    print(text)
    print(f"\nvanilla: retain.vqa_acc {vanilla['retain.vqa_acc']:.3f}, guided_forget.informativeness "
          f"{vanilla['guided_forget.informativeness']:.3f}")  # fmt: skip
    out_dir = workdir / "robustness"
    (out_dir / "table.md").write_text(text + "\n")
    png = Path(args.out) if args.out else out_dir / "pareto.png"
    pareto_plot(points, png)
    log_summary(workdir, [out_dir / "table.md", png, runs_file(workdir)])


def pareto_plot(points: list[tuple[str, int, float, int, bool, float | None]], png: Path) -> Path:
    """Output quality (informativeness) against robustness, one point per run: the audit checks passed
    (left) and the person-level membership gap to the reference, the check every run here fails (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for name, seed, info, n_pass, met, gap in points:
        marker = "o" if met else "x"
        left.scatter(n_pass, info, marker=marker, s=50)
        left.annotate(
            f"{name} s{seed}", (n_pass, info), textcoords="offset points", xytext=(4, 3), fontsize=6
        )
        if gap is not None:
            right.scatter(gap, info, marker=marker, s=50)
            right.annotate(
                f"{name} s{seed}", (gap, info), textcoords="offset points", xytext=(4, 3), fontsize=6
            )
    left.set_xlabel(f"audit checks passed (of {len(CHECKS)})")
    left.set_xlim(-0.5, len(CHECKS) + 0.5)
    left.set_ylabel("quality.informativeness")
    right.set_xlim(left=0)
    right.axvline(0.05, color="grey", linestyle="--", linewidth=1)
    right.annotate("pass limit 0.05", (0.05, 0.02), xycoords=("data", "axes fraction"), fontsize=7, xytext=(3, 0),
                   textcoords="offset points")  # fmt: skip
    right.set_xlabel("membership, person level: max |AUC - AUC_reference| over the attacks")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(
        "output quality vs robustness against the retrained reference (o: every output target met, x: not)"
    )
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def log_summary(workdir: Path, paths: list[Path]) -> None:
    import mlflow

    sys.path.insert(0, str(REPO))
    from pipelines import tracking
    from unlearn_core.config import RunConfig

    uri = tracking.resolve_tracking_uri(RunConfig().tracking, workdir)
    exp = tracking.ensure_experiment(uri, RunConfig().tracking.experiment, workdir)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp, run_name="robustness-summary"):
        mlflow.set_tag("job", "robustness")
        for p in paths:
            mlflow.log_artifact(str(p))
    print(f"logged {', '.join(p.name for p in paths)} to MLflow ({uri}, run robustness-summary)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--workdir", default="workdir")
    run.add_argument("--configs", default=",".join(CONFIGS))
    run.add_argument("--seeds", default="0")
    run.add_argument("--set", action="append", help="an override added to every configuration")
    one = sub.add_parser("one")
    one.add_argument("--workdir", default="workdir")
    one.add_argument("--config", required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--set", action="append")
    table = sub.add_parser("table")
    table.add_argument("--workdir", default="workdir")
    table.add_argument("--out", help="the Pareto plot's PNG (default WORKDIR/robustness/pareto.png)")
    table.add_argument(
        "--sweeps", help="sweep folders (WORKDIR/ray_results/NAME, comma-separated) whose audited trials join"
    )
    args = parser.parse_args()
    {"run": cmd_run, "one": cmd_one, "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
