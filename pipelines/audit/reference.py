"""The retrained reference: the vanilla recipe without the forget rows (or people), trained once per
(data, recipe, seed) and kept in ``WORKDIR/models/reference-<exclude>-<key>/`` like the vanilla model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.defaults import default_config
from pipelines.workspace import NotCached, Workspace, say_once
from unlearn_core.config import RunConfig, load_run_config

# Train fields that change how a job runs, not the weights it trains (tests/test_cpu_launchers.py: the
# launchers give the same weights), left out of the key.
NOT_IN_KEY = (
    "launcher",
    "eval_every",
    "eval_max_samples",
    "checkpoint_every",
    "max_failures",
    "prefetch_batches",
)


def audit_config(workdir: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The recipe the reference is trained with: the vanilla fine-tune's (``finetune.yaml``)."""
    return load_run_config(default_config("finetune"), {"workdir": str(workdir), **(overrides or {})})


def reference_key(cfg: RunConfig, shards_fingerprint: str, exclude: str) -> str:
    recipe = {
        "shards": shards_fingerprint,
        "exclude": exclude,
        "model": cfg.model.model_dump(mode="json"),
        "train": {k: v for k, v in cfg.train.model_dump(mode="json").items() if k not in NOT_IN_KEY},
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def reference_name(cfg: RunConfig, shards_fingerprint: str, exclude: str) -> str:
    """The reference's folder name under ``WORKDIR/models`` (its recipe's key: data, recipe, seed)."""
    return f"reference-{exclude}-{reference_key(cfg, shards_fingerprint, exclude)}"


def ensure_reference(
    cfg: RunConfig, ws: Workspace, shards_fingerprint: str, exclude: str, *, log=print, compute: bool = True
) -> Path:
    """The reference model folder, fine-tuned here (``train.launcher`` auto: in this process for one
    worker, as ``make run``'s vanilla) if the workdir does not hold one of this key. ``compute=False`` raises ``NotCached`` instead."""
    out = ws.models / reference_name(cfg, shards_fingerprint, exclude)
    if (out / "config.json").is_file():
        say_once(log, f"[cached] retrained reference {out}")
        return out
    if not compute:
        raise NotCached(f"retrained reference {out}")
    from pipelines.ray_env import ensure_ray
    from pipelines.train.finetune import run_finetune

    ensure_ray()
    log(f"training the retrained reference (the vanilla recipe without the forget {exclude}) -> {out}")
    run_finetune(cfg, out_name=out.name, log=log, table=False, exclude_forget=exclude)
    return out
