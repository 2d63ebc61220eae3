"""A sweep's identity and state: its stable name, ``sweep.json`` (what a resume reads back) and its
parent MLflow run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass
class SweepState:
    """What ``sweep.json`` holds: the sweep's name, space, config, options and champion rule (all a
    resume needs), and what it has done (its parent run, whether the starting model's metrics are logged)."""

    sweep_name: str
    space_path: str  # absolute
    cfg: RunConfig
    champion_rule: ChampionRule
    num_samples: int
    scheduler: str
    search: str
    max_concurrent: int | None
    workers_per_trial: int
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    before_logged: bool = False

    @classmethod
    def new(
        cls,
        space_path: str | Path,
        cfg: RunConfig,
        *,
        num_samples: int,
        scheduler: str,
        search: str,
        max_concurrent: int | None,
        workers_per_trial: int,
        rule: ChampionRule,
    ) -> SweepState:
        options = {
            "num_samples": num_samples,
            "scheduler": scheduler,
            "search": search,
            "max_concurrent": max_concurrent,
            "workers_per_trial": workers_per_trial,
        }
        return cls(
            sweep_name=sweep_name_for(space_path, cfg, options),
            space_path=str(Path(space_path).resolve()),
            cfg=cfg,
            champion_rule=rule,
            **options,
        )

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepState:
        data = json.loads((sweep_dir / STATE_FILE).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(
            **{
                **{k: v for k, v in data.items() if k in known},
                "cfg": RunConfig.model_validate(data["cfg"]),
                "champion_rule": ChampionRule.from_dict(data["champion_rule"]),
            }
        )

    def save(self, sweep_dir: Path) -> None:
        data = {
            **dataclasses.asdict(self),
            "cfg": self.cfg.model_dump(),
            "champion_rule": self.champion_rule.to_dict(),
        }
        (sweep_dir / STATE_FILE).write_text(json.dumps(data, indent=1))

    def options(self) -> dict[str, Any]:
        """The sweep options, as the parent run's params record them."""
        return {
            "space": self.space_path,
            "num_samples": self.num_samples,
            "scheduler": self.scheduler,
            "search": self.search,
            "max_concurrent": self.max_concurrent,
            "workers_per_trial": self.workers_per_trial,
        }


def open_parent(uri: str, exp_id: str, state: SweepState, space: SearchSpace) -> str:
    """The sweep's parent MLflow run: the one in ``state`` (set RUNNING again), else a new one."""
    client = MlflowClient(uri)
    if state.parent_run_id:
        client.update_run(state.parent_run_id, status="RUNNING")
        return state.parent_run_id
    run_id = tracking.open_run(
        uri,
        exp_id,
        run_name=state.sweep_name,
        params={**state.options(), "method": space.method},
        tags={"job": "sweep", "method": space.method, "sweep": state.sweep_name},
    )
    client.log_text(run_id, Path(state.space_path).read_text(), "search_space.yaml")
    return run_id
