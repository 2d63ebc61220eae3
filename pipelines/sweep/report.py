"""A finished sweep: trial outcomes, their runs' final status, the results table + Pareto plot, the champion."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.evaluate.plots import pareto_front, plot_forget_utility, write_results_table
from pipelines.sweep.champion import ChampionRule, record_no_champion, register_champion, select_champion
from pipelines.sweep.space import OBJECTIVE, Objectives, tune_values
from unlearn_core.config import RunConfig
from unlearn_core.eval.report import format_table
from unlearn_core.search_space import SearchSpace

TABLE_METRICS = (
    "forget.leak_rate",
    "forget_unseen.leak_rate",
    "retain.vqa_acc",
    "quality.informativeness",
    "utility.caption_f1",
    "quality.hallucination",
    OBJECTIVE,
)


def collect_trials(grid: Any, train_storage: Path | None = None) -> dict[str, dict[str, Any]]:
    """ResultGrid -> trial name -> {status, metrics, config, model_dir, run_id, step}. A trial that
    failed before its first report has its MLflow run's id only in its Train run folder (under
    ``train_storage``, where the trial wrote it)."""
    from pipelines.sweep.trial import RUN_MARKER

    out: dict[str, dict[str, Any]] = {}
    for result in grid:
        m = tune_values(result.metrics or {})
        name = m.get("trial_name") or Path(result.path).name
        run_id = m.get("mlflow_run_id")
        marker = train_storage / name / RUN_MARKER if train_storage is not None else None
        if run_id is None and marker is not None and marker.is_file():
            run_id = marker.read_text().strip()
        status = "failed" if result.error else "completed" if m.get("final") == 1 else "stopped"
        metrics = {
            k: float(v)
            for k, v in m.items()
            if ("." in k or k == OBJECTIVE) and isinstance(v, int | float) and not isinstance(v, bool)
        }
        params = {k: v for k, v in (result.config or {}).items()}
        out[name] = {
            "status": status,
            "metrics": metrics,
            "params": params,
            "model_dir": m.get("model_dir"),
            "run_id": run_id,
            "step": m.get("step"),
            "timing": {k: float(v) for k, v in m.items() if k.startswith("time/")},
            tracking.SHA_TAG: m.get(tracking.SHA_TAG),
            "error": str(result.error)[:500] if result.error else None,
        }
    return dict(sorted(out.items()))


def close_unfinished(
    client: MlflowClient, trials: Mapping[str, dict[str, Any]], experiment_id: str, parent_run_id: str
) -> None:
    """Final status of the runs of trials that did not complete: KILLED (stopped early) or FAILED, with
    the reason Tune gives in the ``error`` tag when the trial could not tag it (its process died). A
    trial that failed before it could open its run gets one here, FAILED with that reason: every trial
    has its child run. A tracking server gets a few requests at once (a large sweep has hundreds of
    runs to close); a SQLite store one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    sweep_name = client.get_run(parent_run_id).info.run_name
    todo = [(n, t) for n, t in trials.items() if t["status"] != "completed"]
    with ThreadPoolExecutor(max_workers=8 if client.tracking_uri.startswith("http") else 1) as pool:
        list(pool.map(lambda item: _close(client, *item, experiment_id, parent_run_id, sweep_name), todo))


def _close(
    client: MlflowClient, name: str, t: dict[str, Any], experiment_id: str, parent_run_id: str, sweep: str
) -> None:
    if not t["run_id"]:
        t["run_id"] = tracking.open_run(
            client.tracking_uri,
            experiment_id,
            run_name=f"{sweep}-{name}",
            tags={"mlflow.parentRunId": parent_run_id, "trial_name": name, "job": "sweep-trial"},
            params=dict(t["params"]),
        )
    if t["status"] == "stopped":
        tracking.log_metrics(
            client.tracking_uri, t["run_id"], {}, tags={"stopped_early": f"step {t['step']}"}
        )
        client.set_terminated(t["run_id"], "KILLED")  # the same status again on a resumed sweep: harmless
        return
    if t["error"] and tracking.ERROR_TAG not in client.get_run(t["run_id"]).data.tags:
        client.set_tag(t["run_id"], tracking.ERROR_TAG, t["error"][:4000])
    client.set_terminated(t["run_id"], "FAILED")


def write_report(
    space: SearchSpace,
    trials: Mapping[str, dict[str, Any]],
    before: Mapping[str, float],
    sweep_dir: Path,
    client: MlflowClient,
    parent: str,
    log: Callable[..., None],
    *,
    table: bool = True,
) -> dict[str, Any]:
    done = {n: t["metrics"] for n, t in trials.items() if t["status"] == "completed"}
    front = pareto_front(done)
    if table:
        rows = {n: {k: v for k, v in m.items() if k != OBJECTIVE} for n, m in done.items()}
        log(format_table({"vanilla": before, **rows}))
    for n, t in trials.items():
        params = ", ".join(f"{k}={_short(t['params'].get(k))}" for k in space.dims)
        obj = t["metrics"].get(OBJECTIVE)
        log(
            f"{n}: {t['status']}"
            + (f" at step {t['step']:g}" if t["status"] == "stopped" and t["step"] else "")
            + (f", objective ({space.objective.mode}) {obj:.4g}" if obj is not None else "")
            + f"; {params}"
            + (f"; error: {t['error']}" if t["error"] else "")
        )
    log(f"Pareto front (leak rate, retain accuracy, informativeness): {', '.join(front) or '-'}")
    out_dir = sweep_dir / "report"
    png = plot_forget_utility(
        done,
        out_dir / "pareto.png",
        methods={n: space.method for n in done},
        highlight=front,
        reference={"vanilla": before},
        title=sweep_dir.name,
    )
    columns = ["trial", "status", "pareto", "step", *space.dims, *TABLE_METRICS, "run_id"]
    rows = [
        {
            "trial": n,
            "status": t["status"],
            "pareto": n in front,
            "step": t["step"],
            "run_id": t["run_id"],
            **{k: t["params"].get(k) for k in space.dims},
            **t["metrics"],
        }
        for n, t in trials.items()
    ]
    rows.append({"trial": "vanilla", "status": "reference", **before})
    paths = write_results_table(rows, columns, out_dir / "sweep_results.csv", out_dir / "sweep_results.md")
    for p in [png, *paths]:
        client.log_artifact(parent, str(p))
    counts = {
        "trials_completed": len(done),
        "trials_stopped": sum(t["status"] == "stopped" for t in trials.values()),
        "trials_failed": sum(t["status"] == "failed" for t in trials.values()),
    }
    logged = client.get_run(parent).data.metrics
    if any(
        logged.get(k) != v for k, v in counts.items()
    ):  # a resumed, already reported sweep logs nothing twice
        tracking.log_metrics(client.tracking_uri, parent, counts, step=len(trials))
    client.set_tag(parent, "pareto_front", ",".join(front))
    return {"pareto": front, "artifacts": [str(p) for p in [png, *paths]]}


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pick_champion(
    space: SearchSpace,
    objectives: Objectives,
    cfg: RunConfig,
    trials: Mapping[str, dict[str, Any]],
    before: Mapping[str, float],
    rule: ChampionRule,
    uri: str,
    parent: str,
    log: Callable[..., None],
) -> dict[str, Any]:
    done = {n: t["metrics"] for n, t in trials.items() if t["status"] == "completed"}
    choice = select_champion(
        done, before, rule=rule, objective=OBJECTIVE, objective_mode=space.objective.mode
    )
    for note in choice.notes:
        log(f"champion rule: {note}")
    if choice.trial is None:
        log(f"NO CHAMPION: {choice.reason} (rule: {rule.describe()})")
        record_no_champion(choice, rule, tracking_uri=uri, parent_run_id=parent)
        return {"trial": None, "reason": choice.reason, "qualifying": []}
    if choice.fallback_used:
        log(f"no trial meets the champion rule ({rule.describe()}); falling back to the best objective")
    t = trials[choice.trial]
    name = cfg.tracking.registered_model_name or f"lvlm-unlearn-{space.method}"
    reg = register_champion(
        choice,
        rule,
        run_id=t["run_id"],
        model_dir=t["model_dir"],
        registered_name=name,
        tracking_uri=uri,
        parent_run_id=parent,
    )
    log(f"champion: {choice.trial} ({choice.reason}) -> {reg['uri']} (version {reg['version']})")
    return {
        "trial": choice.trial,
        "reason": choice.reason,
        "qualifying": choice.qualifying,
        "fallback": choice.fallback_used,
        "metrics": choice.metrics,
        **reg,
    }
