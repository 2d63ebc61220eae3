"""`unlearn demo` (= `make run`): the whole pipeline on the embedded default, cached where it can be.

synthetic benchmark -> shards -> vanilla fine-tune -> each baseline -> a small PUBG sweep (ASHA)
-> results table on the terminal, forget-vs-utility plot + champion in MLflow -> with ``audit`` (the
default), the sweep's qualifying trials audited against a reference retrained without the forget rows
(``unlearn sweep --audit``: the champion is the first that passes) and the champion's verdict: every
output target and audit check it fails, and by how much.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from pipelines import tracking
from pipelines.defaults import default_config
from pipelines.evaluate import evaluate_cached
from pipelines.shards import load_manifest
from pipelines.train.finetune import run_finetune
from pipelines.train.unlearn import run_unlearn
from pipelines.workspace import Workspace, ensure_shards
from unlearn_core.config import RunConfig, absolute_folder, load_run_config, with_launcher_resolved
from unlearn_core.eval.report import format_table
from unlearn_core.eval.runner import EVAL_VERSION

if TYPE_CHECKING:
    from pipelines.sweep.driver import SweepResult

# One line per baseline while the demo runs; every metric is in the final table and in MLflow.
SUMMARY = ("forget.leak_rate", "forget_unseen.leak_rate", "retain.vqa_acc", "quality.informativeness")
BASELINES = ("ga", "grad_diff", "kl", "npo", "reject", "random", "mmunlearner")
# tune_spaces/pubg.yaml's dims with the hand-tuned point first: a qualifying champion in the demo's 2 trials
DEMO_SWEEP_SPACE = Path(__file__).resolve().parent / "configs" / "demo_pubg_sweep.yaml"


def _cfg(command: str, workdir: str, overrides: dict[str, Any]) -> RunConfig:
    return load_run_config(default_config(command), {"workdir": workdir, **overrides})


def run_demo(
    workdir: str = "workdir",
    *,
    methods: tuple[str, ...] = BASELINES,
    method_steps: int = 40,
    sweep_samples: int = 2,
    audit: bool = True,
    log=print,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    workdir = absolute_folder(workdir)
    ws = Workspace(Path(workdir))
    base = _cfg("finetune", workdir, {})
    log("== 1/5 data: synthetic benchmark and Ray Data shards")
    shards = ensure_shards(base, ws, log)
    log("== 2/5 vanilla model (Ray Train)")
    vanilla = ws.models / "vanilla"
    if (vanilla / "config.json").exists():
        log(f"[cached] vanilla model {vanilla} (delete it to fine-tune again)")
    else:
        run_finetune(base, log=log, table=False)
    results: dict[str, dict[str, float]] = {
        "vanilla": evaluate_cached(vanilla, shards, ws.results, base.train.eval_max_samples)["metrics"]
    }
    log(f"== 3/5 unlearning baselines ({', '.join(methods)}), {method_steps} steps each")
    for name in methods:
        cfg = baseline_config(workdir, name, method_steps)
        results[name] = _unlearn_once(cfg, ws, vanilla, shards, log)
    sweep_out: SweepResult | None = None
    if sweep_samples > 0:
        from pipelines.sweep import run_sweep

        log(f"== 4/5 PUBG sweep: {sweep_samples} trials, ASHA" + (", audited" if audit else ""))
        cfg = _cfg("unlearn", workdir, {"method.name": "pubg"})
        sweep_out = run_sweep(
            DEMO_SWEEP_SPACE,
            cfg,
            num_samples=sweep_samples,
            scheduler="asha",
            if_exists="resume",
            audit=audit,
            log=log,
            table=False,  # the champion is a column of the final table
        )
        best = sweep_out.champion.trial
        if best:  # the champion trial's final evaluation (every metric, not only the rule's)
            results["pubg (champion)"] = {k: v for k, v in sweep_out.trials[best].metrics.items() if "." in k}
    log("== 5/5 results")
    table = format_table(results)
    log(table)
    _log_summary(base, ws, results, table)
    uri = tracking.resolve_tracking_uri(base.tracking, ws.root)
    log(f"done in {time.perf_counter() - t0:.0f} s")
    log(f"MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
    champion = sweep_out.champion.registered_name if sweep_out is not None else None
    if champion:
        log(
            f"champion:   .venv/bin/unlearn pull models:/{champion}@champion --out champion --workdir {workdir}"
        )
        if sweep_out is not None and sweep_out.champion.trial in sweep_out.champion.audits:
            for line in champion_verdict(sweep_out, results["vanilla"]):
                log(line)
        else:
            log(
                f"audit it:   .venv/bin/unlearn audit --model models:/{champion}@champion --workdir {workdir}"
            )
    return {"results": results, "sweep": sweep_out}


def champion_verdict(sweep_out: SweepResult, vanilla: dict[str, float]) -> list[str]:
    """What the champion misses, plainly: each output target and each audit check it fails, by how much
    (or that it passes them all)."""
    from unlearn_core.audit import verdict_lines

    champ = sweep_out.champion
    metrics = sweep_out.trials[champ.trial].metrics if champ.trial else {}
    missed = missed_targets(metrics, vanilla)
    verdict = champ.audits[champ.trial]
    report = json.loads(Path(verdict["json"]).read_text()) if verdict.get("json") else None
    lines = ["== the champion's verdict (output targets; audit against the retrained reference)"]
    lines.append("output targets: all met" if not missed else "output targets MISSED: " + "; ".join(missed))
    if report is not None:
        lines += [f"  {line}" for line in verdict_lines(report)]
    if verdict["pass"] and not missed:
        lines.append(f"champion {champ.trial} meets every output target and passes every audit check")
    else:
        failed = [*(["output targets"] if missed else []), *verdict["failed"]]
        lines.append(
            f"champion {champ.trial} FAILS: {', '.join(failed)} (docs/audit.md: what the audit finds)"
        )
    return lines


def missed_targets(metrics: dict[str, float], vanilla: dict[str, float]) -> list[str]:
    """The project's output-level targets (the champion rule's) a model misses, each with its figure."""
    from pipelines.sweep.champion import ChampionRule, misses

    return misses(metrics, ChampionRule().bounds(vanilla))


def baseline_config(workdir: str, method: str, steps: int) -> RunConfig:
    """A baseline's config, its ``train.launcher`` resolved (the result cache is keyed by what runs)."""
    return with_launcher_resolved(_cfg("unlearn", workdir, {"method.name": method, "train.steps": steps}))


def _unlearn_once(cfg: RunConfig, ws: Workspace, init_model: Path, shards: Path, log) -> dict[str, float]:
    """`run_unlearn`, skipped when the same config already ran on the same vanilla weights and shards
    (a second `make run` reuses the result; its MLflow run and registered version stay as they were)."""
    key = json.dumps(
        {
            "cfg": cfg.model_dump(mode="json"),
            "model": tracking.weights_sha256(init_model),
            "shards": load_manifest(shards)["fingerprint"],
            "eval": EVAL_VERSION,  # results of an older evaluation are not reused
        },
        sort_keys=True,
    )
    path = ws.results / "demo" / f"{cfg.method.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        log(f"[cached] {cfg.method.name}: MLflow run {cached['run_id']} ({path}; delete it to run again)")
        return cached["metrics"]
    out = run_unlearn(cfg, log=log, table=False)
    log(f"{cfg.method.name}: " + ", ".join(f"{k} {out.metrics[k]:.3f}" for k in SUMMARY if k in out.metrics))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"run_id": out.run_id, "model_dir": str(out.model_dir), "metrics": out.metrics})
    )
    return out.metrics


def _log_summary(cfg: RunConfig, ws: Workspace, results: dict[str, dict[str, float]], table: str) -> None:
    """A `demo` run in MLflow holding the comparison table and the forget-vs-utility plot."""
    from pipelines.evaluate.plots import plot_forget_utility

    uri = tracking.resolve_tracking_uri(cfg.tracking, ws.root)
    exp = tracking.ensure_experiment(uri, cfg.tracking.experiment, ws.root)
    ws.results.mkdir(parents=True, exist_ok=True)
    png = plot_forget_utility(results, ws.results / "forget_vs_utility.png")
    (ws.results / "results.md").write_text(table + "\n")
    (ws.results / "results.json").write_text(json.dumps(results, indent=1))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp, run_name="demo-summary"):
        mlflow.set_tag("job", "demo")
        for path in (png, ws.results / "results.md", ws.results / "results.json"):
            mlflow.log_artifact(str(path))
