"""A sweep's identity and state: its stable name, ``sweep.json`` (what a resume reads back) and its
parent MLflow run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.sweep.champion import ChampionRule
from unlearn_core.config import RunConfig
from unlearn_core.search_space import SearchSpace

STATE_FILE = "sweep.json"
SPACE_COPY = "search_space.yaml"  # the space file as the sweep started, beside sweep.json


def sweep_name_for(space_path: str | Path, cfg: RunConfig, options: Mapping[str, Any]) -> str:
    """``sweep-<space>-<hash of the space file, the config and the sweep options>``: stable across runs."""
    text = Path(space_path).read_text()
    blob = json.dumps(
        {"space": text, "cfg": cfg.model_dump(), "options": dict(options)}, sort_keys=True, default=str
    )
    return f"sweep-{Path(space_path).stem}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def open_parent(uri: str, exp_id: str, state: dict[str, Any], space: SearchSpace) -> str:
    client = MlflowClient(uri)
    if state.get("parent_run_id"):
        client.update_run(state["parent_run_id"], status="RUNNING")
        return str(state["parent_run_id"])
    params = {
        "space": state["space_path"],
        "num_samples": state["num_samples"],
        "scheduler": state["scheduler"],
        "search": state["search"],
        "max_concurrent": state["max_concurrent"],
        "workers_per_trial": state["workers_per_trial"],
        "method": space.method,
    }
    run_id = tracking.open_run(
        uri,
        exp_id,
        run_name=state["sweep_name"],
        params=params,
        tags={"job": "sweep", "method": space.method, "sweep": state["sweep_name"]},
    )
    client.log_text(run_id, Path(state["space_path"]).read_text(), "search_space.yaml")
    return run_id


def new_state(
    space_path: str | Path,
    cfg: RunConfig,
    *,
    num_samples: int,
    scheduler: str,
    search: str,
    max_concurrent: int | None,
    workers_per_trial: int,
    rule: ChampionRule,
) -> dict[str, Any]:
    options = {
        "num_samples": num_samples,
        "scheduler": scheduler,
        "search": search,
        "max_concurrent": max_concurrent,
        "workers_per_trial": workers_per_trial,
    }
    name = sweep_name_for(space_path, cfg, options)
    return {
        "sweep_name": name,
        "space_path": str(Path(space_path).resolve()),
        "cfg": cfg.model_dump(),
        "champion_rule": {**rule.__dict__, "leak_metrics": list(rule.leak_metrics)},
        **options,
    }
