"""The registry champion of a sweep: a documented, configurable selection rule, and its registration.

Default rule (``ChampionRule()``), applied to the trials that finished (their exported model was
evaluated; trials stopped early by ASHA or failed are never candidates):

1. A trial qualifies if it meets every output-level target of the project: ``forget.leak_rate`` == 0
   and ``forget_unseen.leak_rate`` == 0 (``<= max_leak``, default 0), ``retain.vqa_acc`` >= 0.95 x the
   vanilla (before-unlearning) model's ``retain.vqa_acc`` (``min_retain_ratio``), no Unlearning
   Aftermath (``max_aftermath``: ``quality.hallucination`` <= 0.10, ``quality.refusal_rate`` <= 0.05,
   ``quality.degeneracy_rate`` <= 0.02) and ``quality.informativeness`` >= 0.8 x the vanilla's
   informativeness under the privacy instruction, ``guided_forget.informativeness``
   (``min_rank_ratio``: the answers stay nearly as informative as the guided teacher's). A trial lacking
   one of these metrics does not qualify; a metric that no trial reports (the benchmark has no such
   split or task) is skipped, and so is a bound whose vanilla figure is missing. Every skip is named in
   the rationale.
2. Among qualifying trials the highest ``quality.informativeness`` wins; ties go to the better sweep
   objective (lower for ``mode: min``), then to the trial name.
3. If none qualifies, this is said clearly; ``fallback="objective"`` (default) then takes the trial
   with the best objective (the rationale says it is a fallback), ``fallback="none"`` registers nothing.

The champion's model is logged on its trial's MLflow run, registered (``tracking.registered_model_name``
or ``lvlm-unlearn-<method>``) and the alias ``champion`` is moved to that version; the rationale is
set as the model-version tag and the sweep's parent-run tag ``champion_rationale``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from mlflow.tracking import MlflowClient

from pipelines import tracking

CHAMPION_ALIAS = "champion"
RATIONALE_TAG = "champion_rationale"
MAX_TAG_CHARS = 4000


@dataclass(frozen=True)
class ChampionRule:
    leak_metrics: tuple[str, ...] = ("forget.leak_rate", "forget_unseen.leak_rate")
    max_leak: float = 0.0
    retain_metric: str = "retain.vqa_acc"
    min_retain_ratio: float = 0.95
    rank_metric: str = "quality.informativeness"  # higher is better
    fallback: Literal["objective", "none"] = "objective"
    # (metric, highest allowed value): the Unlearning Aftermaths
    max_aftermath: tuple[tuple[str, float], ...] = (
        ("quality.hallucination", 0.10),
        ("quality.refusal_rate", 0.05),
        ("quality.degeneracy_rate", 0.02),
    )
    min_rank_ratio: float = 0.8  # rank_metric >= this x the vanilla's rank_reference
    rank_reference: str = "guided_forget.informativeness"

    def __post_init__(self) -> None:
        if self.fallback not in ("objective", "none"):
            raise ValueError(f"champion fallback must be 'objective' or 'none', got {self.fallback!r}")
        if self.max_leak < 0 or self.min_retain_ratio < 0 or self.min_rank_ratio < 0:
            raise ValueError("champion max_leak, min_retain_ratio and min_rank_ratio must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "leak_metrics": list(self.leak_metrics),
            "max_aftermath": {m: v for m, v in self.max_aftermath},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ChampionRule:
        """A rule from plain values (``to_dict``, a sweep's ``sweep.json``); unknown keys are errors."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown champion rule keys {unknown}; valid: {', '.join(sorted(known))}")
        if "leak_metrics" in data:
            data["leak_metrics"] = tuple(data["leak_metrics"])
        if "max_aftermath" in data:
            data["max_aftermath"] = tuple((str(m), float(v)) for m, v in dict(data["max_aftermath"]).items())
        return cls(**data)

    def bounds(self, vanilla: Mapping[str, Any]) -> list[tuple[str, str, float, str]]:
        """Every output target as (metric, "<=" or ">=", bound, where the bound comes from); a bound
        relative to a vanilla figure the vanilla lacks is left out."""
        out = [(m, "<=", self.max_leak, "max_leak") for m in self.leak_metrics]
        out += [(m, "<=", cap, "max_aftermath") for m, cap in self.max_aftermath]
        if (v := _num(vanilla, self.retain_metric)) is not None:
            out.append((self.retain_metric, ">=", self.min_retain_ratio * v, f"vanilla {v:.4g}"))
        if self.min_rank_ratio > 0 and (v := _num(vanilla, self.rank_reference)) is not None:
            out.append(
                (self.rank_metric, ">=", self.min_rank_ratio * v, f"vanilla {self.rank_reference} {v:.4g}")
            )
        return out

    def describe(self) -> str:
        leaks = " and ".join(f"{m} <= {self.max_leak:g}" for m in self.leak_metrics)
        after = "".join(f" and {m} <= {v:g}" for m, v in self.max_aftermath)
        inform = f" and {self.rank_metric} >= {self.min_rank_ratio:g} x vanilla {self.rank_reference}"
        return (
            f"qualify: {leaks} and {self.retain_metric} >= {self.min_retain_ratio:g} x vanilla{after}"
            f"{inform if self.min_rank_ratio > 0 else ''}; "
            f"pick: highest {self.rank_metric} (ties: better objective); "
            f"none qualifies: {'best objective' if self.fallback == 'objective' else 'register nothing'}"
        )


@dataclass
class ChampionChoice:
    trial: str | None
    qualifying: list[str]
    fallback_used: bool
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ranked: list[str] = field(default_factory=list)  # the qualifying trials, best first (the rule's order)

    def rationale(self, rule: ChampionRule) -> str:
        """Compact JSON for tags: the rule, the qualifying trials, the choice and its metrics."""
        data = {
            "rule": rule.describe(),
            "chosen": self.trial,
            "fallback": self.fallback_used,
            "reason": self.reason,
            "qualifying": self.qualifying,
            "metrics": self.metrics,
            "notes": self.notes,
        }
        text = json.dumps(data, sort_keys=True)
        while len(text) > MAX_TAG_CHARS and data["qualifying"]:
            data["qualifying"] = data["qualifying"][: len(data["qualifying"]) // 2] + ["..."]
            text = json.dumps(data, sort_keys=True)
        return text[:MAX_TAG_CHARS]


def _num(metrics: Mapping[str, Any], name: str) -> float | None:
    v = metrics.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(float(v)):
        return None
    return float(v)


def _objective_key(mode: str):
    sign = 1.0 if mode == "min" else -1.0

    def key(item: tuple[str, Mapping[str, Any]], objective: str) -> float:
        v = _num(item[1], objective)
        return sign * v if v is not None else math.inf

    return key


def misses(metrics: Mapping[str, Any], bounds: list[tuple[str, str, float, str]]) -> list[str]:
    """The bounds ``metrics`` misses, each with its figure (a missing metric misses its bound)."""
    out = []
    for name, kind, bound, _ in bounds:
        v = _num(metrics, name)
        if v is None:
            out.append(f"{name} missing")
        elif kind == "<=" and v > bound + 1e-12:
            out.append(f"{name} {v:.3f} > {bound:.4g}")
        elif kind == ">=" and v < bound - 1e-12:
            out.append(f"{name} {v:.3f} < {bound:.4g}")
    return out


def select_champion(
    trials: Mapping[str, Mapping[str, Any]],
    vanilla: Mapping[str, Any],
    *,
    rule: ChampionRule | None = None,
    objective: str = "objective",
    objective_mode: str = "min",
) -> ChampionChoice:
    """Apply ``rule`` to finished trials (name -> final metrics) against the vanilla model's metrics."""
    rule = rule or ChampionRule()
    notes: list[str] = []
    bounds = rule.bounds(vanilla)
    for name, low in ((rule.retain_metric, True), (rule.rank_metric, rule.min_rank_ratio > 0)):
        if low and not any(b[0] == name for b in bounds):
            ref = rule.retain_metric if name == rule.retain_metric else rule.rank_reference
            notes.append(f"vanilla has no {ref}: {name} bound skipped")
    reported = [b for b in bounds if any(_num(t, b[0]) is not None for t in trials.values())]
    notes += [f"{b[0]}: reported by no trial, skipped" for b in bounds if b not in reported]
    notes += [f"{name} bound {value:.4g} ({why})" for name, kind, value, why in reported if kind == ">="]

    def qualifies(m: Mapping[str, Any]) -> bool:
        return not misses(m, reported)

    qualifying = sorted(n for n, m in trials.items() if qualifies(m))
    by_objective = _objective_key(objective_mode)
    if qualifying:

        def rank(name: str) -> tuple[float, float, str]:
            inf = _num(trials[name], rule.rank_metric)
            return (
                -(inf if inf is not None else -math.inf),
                by_objective((name, trials[name]), objective),
                name,
            )

        ranked = sorted(qualifying, key=rank)
        best = ranked[0]
        reason = f"highest {rule.rank_metric} among {len(qualifying)} qualifying trial(s)"
        return ChampionChoice(
            best, qualifying, False, reason, _chosen_metrics(trials[best], rule, objective), notes, ranked
        )
    if rule.fallback == "none" or not trials:
        reason = "no trial qualifies" + (": nothing registered" if trials else " (no finished trials)")
        return ChampionChoice(None, [], False, reason, {}, notes)
    ranked = sorted(trials.items(), key=lambda it: (by_objective(it, objective), it[0]))
    name, metrics = ranked[0]
    if _num(metrics, objective) is None:
        return ChampionChoice(
            None, [], False, f"no trial qualifies and none reports {objective!r}", {}, notes
        )
    reason = f"no trial qualifies; fallback: best {objective} ({objective_mode})"
    return ChampionChoice(name, [], True, reason, _chosen_metrics(metrics, rule, objective), notes)


def _chosen_metrics(metrics: Mapping[str, Any], rule: ChampionRule, objective: str) -> dict[str, float]:
    names = [
        *rule.leak_metrics,
        rule.retain_metric,
        rule.rank_metric,
        *(m for m, _ in rule.max_aftermath),
        objective,
    ]
    return {n: v for n in names if (v := _num(metrics, n)) is not None}


def register_champion(
    choice: ChampionChoice,
    rule: ChampionRule,
    *,
    run_id: str,
    model_dir: str | Path,
    registered_name: str,
    tracking_uri: str,
    parent_run_id: str,
) -> dict[str, Any]:
    """Log + register the chosen trial's model (once per run), move ``@champion`` to it, tag the rationale."""
    client = MlflowClient(tracking_uri)
    rationale = choice.rationale(rule)
    existing = client.search_model_versions(f"name='{registered_name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
        sha = (client.get_model_version(registered_name, version).tags or {}).get(tracking.SHA_TAG)
    else:
        logged = tracking.log_model(run_id, model_dir, registered_name, tracking_uri=tracking_uri)
        version, sha = str(logged["version"]), logged[tracking.SHA_TAG]
    tracking.set_alias(registered_name, CHAMPION_ALIAS, version, tracking_uri=tracking_uri)
    client.set_model_version_tag(registered_name, version, RATIONALE_TAG, rationale)
    client.set_model_version_tag(registered_name, version, "sweep_parent_run_id", parent_run_id)
    for key, value in {
        RATIONALE_TAG: rationale,
        "champion_trial": choice.trial or "",
        "champion_run_id": run_id,
        "champion_model": f"models:/{registered_name}/{version}",
    }.items():
        client.set_tag(parent_run_id, key, value)
    return {
        "name": registered_name,
        "version": version,
        "uri": f"models:/{registered_name}@{CHAMPION_ALIAS}",
        tracking.SHA_TAG: sha,
        "rationale": rationale,
    }


def fallback_choice(
    trials: Mapping[str, Mapping[str, Any]],
    rule: ChampionRule,
    *,
    reason: str,
    objective: str = "objective",
    objective_mode: str = "min",
    notes: list[str] | None = None,
) -> ChampionChoice:
    """``rule.fallback`` once the rule's candidates are used up: the best objective, or nothing."""
    ranked = sorted(trials.items(), key=lambda it: (_objective_key(objective_mode)(it, objective), it[0]))
    if rule.fallback == "none" or not ranked or _num(ranked[0][1], objective) is None:
        return ChampionChoice(None, [], False, f"{reason}: nothing registered", {}, list(notes or []))
    name, metrics = ranked[0]
    return ChampionChoice(
        name,
        [],
        True,
        f"{reason}; fallback: best {objective} ({objective_mode})",
        _chosen_metrics(metrics, rule, objective),
        list(notes or []),
    )


def record_no_champion(
    choice: ChampionChoice, rule: ChampionRule, *, tracking_uri: str, parent_run_id: str
) -> None:
    client = MlflowClient(tracking_uri)
    client.set_tag(parent_run_id, RATIONALE_TAG, choice.rationale(rule))
    client.set_tag(parent_run_id, "champion_trial", "")
