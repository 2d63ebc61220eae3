"""A finished sweep: trial outcomes, their runs' final status, the results table + Pareto plot, the champion."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.evaluate.plots import pareto_front, plot_forget_utility, write_results_table
from pipelines.sweep.champion import (
    ChampionChoice,
    ChampionRule,
    fallback_choice,
    record_no_champion,
    register_champion,
    select_champion,
)
from pipelines.sweep.tune_config import OBJECTIVE, Objectives, tune_values
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


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended, from its last Tune result."""

    status: str  # "completed" (final evaluation reported), "stopped" (by the scheduler) or "failed"
    metrics: dict[str, float]  # its last evaluation's metrics and the objective
    params: dict[str, Any]  # the sampled dims (dotted config keys)
    model_dir: str | None = None
    run_id: str | None = None  # its MLflow child run
    step: float | None = None  # the step of its last report
    timing: dict[str, float] = field(default_factory=dict)  # ``time/*`` (completed trials)
    weights_sha256: str | None = None
    pid: int | None = None  # the process (Tune actor) that ran it
    error: str | None = None


@dataclass(frozen=True)
class ChampionOutcome:
    """The sweep's champion (``trial`` None: none), why, and where it is registered."""

    trial: str | None
    reason: str
    qualifying: list[str]
    fallback: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    registered_name: str | None = None
    version: str | None = None
    uri: str | None = None  # models:/NAME@champion
    weights_sha256: str | None = None
    rationale: str | None = None
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial -> its verdict (--audit)


def collect_trials(grid: Any, train_storage: Path | None = None) -> dict[str, TrialOutcome]:
    """ResultGrid -> trial name -> its outcome, sorted by name. A trial that failed before its first
    report has its MLflow run's id only in its Train run folder (under ``train_storage``, where the
    trial wrote it)."""
    from pipelines.sweep.trial import RUN_MARKER

    out: dict[str, TrialOutcome] = {}
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
        out[name] = TrialOutcome(
            status=status,
            metrics=metrics,
            params=dict(result.config or {}),
            model_dir=m.get("model_dir"),
            run_id=run_id,
            step=m.get("step"),
            timing={k: float(v) for k, v in m.items() if k.startswith("time/")},
            weights_sha256=m.get(tracking.SHA_TAG),
            pid=m.get("pid"),
            error=str(result.error)[:500] if result.error else None,
        )
    return dict(sorted(out.items()))


def close_unfinished(
    client: MlflowClient, trials: Mapping[str, TrialOutcome], experiment_id: str, parent_run_id: str
) -> dict[str, TrialOutcome]:
    """Final status of the runs of trials that did not complete: KILLED (stopped early) or FAILED, with
    the reason Tune gives in the ``error`` tag when the trial could not tag it (its process died). A
    trial that failed before it could open its run gets one here, FAILED with that reason: every trial
    has its child run. Returns the outcomes with those runs. A tracking server gets a few requests at
    once (a large sweep has hundreds of runs to close); a SQLite store one at a time."""
    from concurrent.futures import ThreadPoolExecutor

    sweep_name = client.get_run(parent_run_id).info.run_name
    todo = [(n, t) for n, t in trials.items() if t.status != "completed"]
    with ThreadPoolExecutor(max_workers=8 if client.tracking_uri.startswith("http") else 1) as pool:
        closed = dict(
            pool.map(lambda item: _close(client, *item, experiment_id, parent_run_id, sweep_name), todo)
        )
    return {n: closed.get(n, t) for n, t in trials.items()}


def _close(
    client: MlflowClient, name: str, t: TrialOutcome, experiment_id: str, parent_run_id: str, sweep: str
) -> tuple[str, TrialOutcome]:
    if not t.run_id:
        run_id = tracking.open_run(
            client.tracking_uri,
            experiment_id,
            run_name=f"{sweep}-{name}",
            tags={"mlflow.parentRunId": parent_run_id, "trial_name": name, "job": "sweep-trial"},
            params=dict(t.params),
        )
        t = replace(t, run_id=run_id)
    if t.status == "stopped":
        tags = {"stopped_early": f"step {t.step}"}
        tracking.log_metrics(client.tracking_uri, t.run_id, {}, tags=tags)
        client.set_terminated(t.run_id, "KILLED")  # the same status again on a resumed sweep: harmless
        return name, t
    if t.error and tracking.ERROR_TAG not in client.get_run(t.run_id).data.tags:
        client.set_tag(t.run_id, tracking.ERROR_TAG, t.error[:4000])
    client.set_terminated(t.run_id, "FAILED")
    return name, t


def completed_metrics(trials: Mapping[str, TrialOutcome]) -> dict[str, dict[str, float]]:
    """Trial name -> final metrics, for the trials that completed (the champion's candidates)."""
    return {n: t.metrics for n, t in trials.items() if t.status == "completed"}


def write_report(
    space: SearchSpace,
    trials: Mapping[str, TrialOutcome],
    before: Mapping[str, float],
    sweep_dir: Path,
    client: MlflowClient,
    parent: str,
    log: Callable[..., None],
    *,
    table: bool = True,
) -> tuple[list[str], list[str]]:
    """The trials' lines, table, Pareto plot and CSV/Markdown tables (logged on the parent run);
    returns the Pareto front and the files written."""
    done = completed_metrics(trials)
    front = pareto_front(done)
    if table:
        rows = {n: {k: v for k, v in m.items() if k != OBJECTIVE} for n, m in done.items()}
        log(format_table({"vanilla": before, **rows}))
    for n, t in trials.items():
        params = ", ".join(f"{k}={_short(t.params.get(k))}" for k in space.dims)
        obj = t.metrics.get(OBJECTIVE)
        log(
            f"{n}: {t.status}"
            + (f" at step {t.step:g}" if t.status == "stopped" and t.step else "")
            + (f", objective ({space.objective.mode}) {obj:.4g}" if obj is not None else "")
            + f"; {params}"
            + (f"; error: {t.error}" if t.error else "")
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
            "status": t.status,
            "pareto": n in front,
            "step": t.step,
            "run_id": t.run_id,
            **{k: t.params.get(k) for k in space.dims},
            **t.metrics,
        }
        for n, t in trials.items()
    ]
    rows.append({"trial": "vanilla", "status": "reference", **before})
    paths = write_results_table(rows, columns, out_dir / "sweep_results.csv", out_dir / "sweep_results.md")
    for p in [png, *paths]:
        client.log_artifact(parent, str(p))
    counts = {
        "trials_completed": len(done),
        "trials_stopped": sum(t.status == "stopped" for t in trials.values()),
        "trials_failed": sum(t.status == "failed" for t in trials.values()),
    }
    logged = client.get_run(parent).data.metrics
    if any(
        logged.get(k) != v for k, v in counts.items()
    ):  # a resumed, already reported sweep logs nothing twice
        tracking.log_metrics(client.tracking_uri, parent, counts, step=len(trials))
    client.set_tag(parent, "pareto_front", ",".join(front))
    return front, [str(p) for p in [png, *paths]]


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pick_champion(
    space: SearchSpace,
    objectives: Objectives,
    cfg: RunConfig,
    trials: Mapping[str, TrialOutcome],
    before: Mapping[str, float],
    rule: ChampionRule,
    uri: str,
    parent: str,
    log: Callable[..., None],
    *,
    auditor: Callable[[str], dict[str, Any]] | None = None,
) -> ChampionOutcome:
    """Select (``select_champion``), with an ``auditor`` audit the qualifying trials in the rule's order
    until one passes, register the champion and move ``@champion`` to it."""
    done = completed_metrics(trials)
    choice = select_champion(
        done, before, rule=rule, objective=OBJECTIVE, objective_mode=space.objective.mode
    )
    for note in choice.notes:
        log(f"champion rule: {note}")
    audits: dict[str, dict[str, Any]] = {}
    if auditor is not None and choice.trial is not None:
        choice = _first_passing(choice, trials, done, rule, space, auditor, audits, log)
    if choice.trial is None:
        log(f"NO CHAMPION: {choice.reason} (rule: {rule.describe()})")
        record_no_champion(choice, rule, tracking_uri=uri, parent_run_id=parent)
        return ChampionOutcome(trial=None, reason=choice.reason, qualifying=[], audits=_verdicts(audits))
    if choice.fallback_used:
        log(f"no trial meets the champion rule ({rule.describe()}); falling back to the best objective")
    t = trials[choice.trial]
    name = cfg.tracking.registered_model_name or f"lvlm-unlearn-{space.method}"
    reg = register_champion(
        choice,
        rule,
        run_id=t.run_id or "",
        model_dir=t.model_dir or "",
        registered_name=name,
        tracking_uri=uri,
        parent_run_id=parent,
    )
    if choice.trial in audits:
        from pipelines.audit.record import verdict_tags

        report = audits[choice.trial]
        client = MlflowClient(uri)
        for key, value in verdict_tags(report, report.get("run_id", "")).items():
            client.set_model_version_tag(name, reg["version"], key, value)
            client.set_tag(parent, key, value)
    log(f"champion: {choice.trial} ({choice.reason}) -> {reg['uri']} (version {reg['version']})")
    return ChampionOutcome(
        trial=choice.trial,
        reason=choice.reason,
        qualifying=choice.qualifying,
        fallback=choice.fallback_used,
        metrics=choice.metrics,
        registered_name=reg["name"],
        version=reg["version"],
        uri=reg["uri"],
        weights_sha256=reg[tracking.SHA_TAG],
        rationale=reg["rationale"],
        audits=_verdicts(audits),
    )


def _first_passing(
    choice: ChampionChoice,
    trials: Mapping[str, TrialOutcome],
    done: Mapping[str, Mapping[str, Any]],
    rule: ChampionRule,
    space: SearchSpace,
    auditor: Callable[[str], dict[str, Any]],
    audits: dict[str, dict[str, Any]],
    log: Callable[..., None],
) -> ChampionChoice:
    """The first of ``choice.ranked`` (or the fallback trial) that passes the audit; else the rule's
    fallback, audited too so that its registered version carries a verdict."""
    candidates = choice.ranked or [choice.trial]
    kind = "qualifying" if choice.ranked else "fallback"
    for n, trial in enumerate(candidates, start=1):
        log(f"auditing {trial} ({n}/{len(candidates)} {kind} trial(s))")
        audits[trial] = auditor(trials[trial].model_dir or "")
        verdict = "PASS" if audits[trial]["pass"] else "FAIL (" + ", ".join(audits[trial]["failed"]) + ")"
        log(f"{trial}: audit {verdict}")
        if audits[trial]["pass"]:
            return dataclasses.replace(
                choice, trial=trial, reason=f"{choice.reason}; first to pass the audit"
            )
    if not choice.ranked:  # the fallback trial itself failed: it is registered, its verdict says so
        return dataclasses.replace(choice, reason=f"{choice.reason}; it fails the audit")
    log(f"no qualifying trial passes the audit ({len(candidates)} audited); the rule's fallback applies")
    fallback = fallback_choice(
        done,
        rule,
        reason=f"no qualifying trial passes the audit ({', '.join(candidates)})",
        objective=OBJECTIVE,
        objective_mode=space.objective.mode,
        notes=choice.notes,
    )
    if fallback.trial is not None and fallback.trial not in audits:
        audits[fallback.trial] = auditor(trials[fallback.trial].model_dir or "")
    return fallback


def _verdicts(audits: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        t: {
            "pass": r["pass"],
            "failed": r["failed"],
            "run_id": r.get("run_id"),
            "json": r.get("paths", {}).get("json"),
        }
        for t, r in audits.items()
    }
