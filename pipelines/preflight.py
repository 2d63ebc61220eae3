"""Validation first: every input of a command is checked before Ray starts and before anything is written.

Each check raises ``ConfigError`` naming the field or file and the fix. Nothing here starts Ray, opens
MLflow, loads a model or creates a folder; the checks read only small files (JSON markers, YAML).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unlearn_core.config import ConfigError, RunConfig
from unlearn_core.method_registry import METHOD_CLASSES, check_params

RECORDS_MARKER = "records_meta.json"  # written by `unlearn data synth|convert`
SHARDS_MARKER = "manifest.json"  # written by `unlearn data shard`
MODEL_MARKER = "config.json"  # every Hugging Face model folder
BUILTIN_MODELS = ("tiny-llava",)
REGISTRY_URI = re.compile(r"^models:/[^/@\s]+(@[^/@\s]+|/\d+)$")
# An HF hub id: "name" or "org/name" (letters, digits, - _ .); anything else is read as a local path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------- paths


def folder_writable(path: str | Path, field: str) -> None:
    """``path`` is a folder or can become one (nothing in the way is a file)."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ConfigError(f"{field}: {q} is a file, not a folder; choose another path")
            return


def records_folder(path: str | Path, field: str) -> Path:
    return _marked_folder(
        path,
        field,
        "records",
        RECORDS_MARKER,
        build="build it with `unlearn data synth` or `unlearn data convert`",
        mistaken=(SHARDS_MARKER, "it is a shards folder: pass the records it was built from"),
    )


def shards_folder(path: str | Path, field: str) -> Path:
    return _marked_folder(
        path,
        field,
        "shards",
        SHARDS_MARKER,
        build="build it with `unlearn data shard`",
        mistaken=(RECORDS_MARKER, "it is a records folder: shard it with `unlearn data shard`"),
    )


def _marked_folder(
    path: str | Path, field: str, kind: str, marker: str, *, build: str, mistaken: tuple[str, str]
) -> Path:
    """``path`` is a ``kind`` folder (it holds ``marker``); the error says how to build one, or what
    the folder is instead when it holds the other kind's marker (``mistaken``: that marker, the hint)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{field}: {kind} folder {p} does not exist; {build}")
    if not (p / marker).is_file():
        hint = f" ({mistaken[1]})" if (p / mistaken[0]).is_file() else ""
        raise ConfigError(f"{field}: {p} is not a {kind} folder (no {marker}){hint}")
    return p


def model_folder(path: str | Path, field: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{field}: model folder {p} does not exist")
    if not (p / MODEL_MARKER).is_file():
        raise ConfigError(
            f"{field}: {p} is not a model folder (no {MODEL_MARKER}); pass a folder written by "
            "`unlearn finetune`/`run` or `unlearn pull`"
        )
    try:
        config = json.loads((p / MODEL_MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{field}: {p / MODEL_MARKER} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ConfigError(f"{field}: {p / MODEL_MARKER} has no model_type: not a Hugging Face model folder")
    return p


def registry_uri(uri: str, field: str) -> None:
    if not REGISTRY_URI.match(uri):
        raise ConfigError(
            f"{field}: {uri!r} is not a registry URI; expected models:/NAME@ALIAS or models:/NAME/VERSION"
        )


def model_spec(spec: str, field: str, *, allow_hub: bool = True, allow_registry: bool = True) -> None:
    """A model spec: ``tiny-llava``, ``models:/...``, a local model folder, or (``allow_hub``) an HF id."""
    if spec in BUILTIN_MODELS:
        return
    if spec.startswith("models:/"):
        if not allow_registry:
            raise ConfigError(
                f"{field}: a registry URI ({spec}) cannot be used here; pass a local model folder "
                "(`unlearn pull` downloads one)"
            )
        registry_uri(spec, field)
        return
    p = Path(spec).expanduser()
    if p.exists():
        model_folder(p, field)
        return
    if allow_hub and HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return
    raise ConfigError(
        f"{field}: {spec!r} is neither an existing model folder nor a known model "
        f"({', '.join(BUILTIN_MODELS)}, models:/NAME@ALIAS{', an HF id' if allow_hub else ''})"
    )


def ray_address(timeout_s: float = 3.0) -> None:
    """``RAY_ADDRESS`` as ``HOST:PORT`` answers (``ray.init`` would otherwise retry a dead address
    forever, silently); ``auto``, ``local`` and ``ray://``/``http://`` addresses are left to Ray."""
    import os
    import socket

    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"RAY_ADDRESS={address!r}: expected HOST:PORT (the head's GCS address), auto or ray://HOST:PORT"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({err.strerror or err}); start one "
            "with `ray start --head` or unset RAY_ADDRESS for a local Ray"
        ) from None


# ------------------------------------------------------------------------------------------- methods


def method(name: str, params: dict[str, Any]) -> None:
    """The method exists and its params validate: the registry's names and Params models (no torch)."""
    check_params(name, params)


def method_names(names: Iterable[str], field: str) -> None:
    bad = [n for n in names if n.strip().lower() not in METHOD_CLASSES]
    if bad:
        raise ConfigError(f"{field}: unknown method(s) {bad}; valid: {', '.join(sorted(METHOD_CLASSES))}")


# -------------------------------------------------------------------------------------- run configs


def run_config(cfg: RunConfig, command: str) -> None:
    """A finetune/unlearn/sweep config: workdir, data paths, model spec and method, before any work."""
    folder_writable(cfg.workdir, "workdir")
    if cfg.records:
        records_folder(cfg.records, "records")
    if cfg.shards:
        shards_folder(cfg.shards, "shards")
    spec = cfg.model.spec
    if command == "finetune":
        model_spec(spec, "model.spec", allow_registry=False)
        return
    method(cfg.method.name, cfg.method.params)
    if spec == "tiny-llava":  # unlearning starts from the workdir's fine-tuned vanilla model
        vanilla = Path(cfg.workdir) / "models" / "vanilla"
        if not (vanilla / MODEL_MARKER).is_file():
            raise ConfigError(
                f"model.spec is tiny-llava but {vanilla} does not exist: run "
                f"`unlearn finetune --workdir {cfg.workdir}` first, or pass --model FOLDER|models:/NAME@ALIAS"
            )
        return
    model_spec(spec, "model.spec", allow_hub=False)


def sweep(
    cfg: RunConfig,
    space_path: str | None,
    *,
    resume: str | None,
    scheduler: str,
    search: str,
    num_samples: int | None,
    max_concurrent: int | None,
    workers_per_trial: int,
) -> None:
    """A new sweep: the space file (dims, base, objective), its options and the config its trials start
    from; a resumed one: the sweep folder."""
    for field, value, low in (
        ("--num-samples", num_samples, 1),
        ("--max-concurrent", max_concurrent, 1),
        ("--workers-per-trial", workers_per_trial, 1),
    ):
        if value is not None and value < low:
            raise ConfigError(f"{field}: must be >= {low}, got {value}")
    if cfg.train.launcher == "in_process" and workers_per_trial > 1:
        raise ConfigError(
            f"train.launcher=in_process runs each trial as one worker in its own actor; "
            f"--workers-per-trial {workers_per_trial} needs train.launcher=ray_train (or auto)"
        )
    if resume:
        from pipelines.sweep.state import STATE_FILE

        if not (Path(resume) / STATE_FILE).is_file():
            raise ConfigError(
                f"--resume {resume}: not a sweep folder (no {STATE_FILE}); pass the folder a sweep printed"
            )
        return
    if not space_path:
        raise ConfigError("unlearn sweep needs --space FILE (e.g. tune_spaces/pubg.yaml) or --resume DIR")
    import yaml

    from pipelines.sweep.tune_config import check_options, load_sweep_space

    try:
        space, objectives = load_sweep_space(space_path)
    except yaml.YAMLError as err:
        raise ConfigError(f"--space {space_path}: not valid YAML: {err}") from None
    check_options(objectives, scheduler, search)
    from unlearn_core.config import MethodConfig

    # load_sweep_space checked every dim and base value against the schema and the method's params;
    # left: the config the trials start from (workdir, data, the model to unlearn).
    run_config(cfg.model_copy(update={"method": MethodConfig(name=space.method)}), "sweep")
