"""Before any work: is the model one the workdir's data can audit? Its tokenizer and image processor
must be the shards' and (from its provenance) it must come from the same shards. Reads JSON only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.provenance import PROVENANCE_FILE, read_provenance
from unlearn_core.config import ConfigError

IMAGE_KEYS = ("size", "crop_size", "image_mean", "image_std", "patch_size")


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _vocab(folder: Path) -> dict[str, int] | None:
    """Token -> id of a fast tokenizer (``tokenizer.json``: its model vocabulary and added tokens)."""
    data = _json(folder / "tokenizer.json")
    if data is None:
        return None
    vocab = dict((data.get("model") or {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    return vocab


def tokenizer_problem(model_dir: Path, processor_dir: Path) -> str | None:
    mine, theirs = _vocab(model_dir), _vocab(processor_dir)
    if mine is None or theirs is None:
        missing = model_dir if mine is None else processor_dir
        return f"no readable tokenizer.json in {missing}: cannot compare the tokenizers"
    if mine == theirs:
        return None
    only_model = sorted(set(mine) - set(theirs))
    only_data = sorted(set(theirs) - set(mine))
    moved = sorted(t for t in set(mine) & set(theirs) if mine[t] != theirs[t])
    return (
        f"its tokenizer differs from the workdir's ({len(mine)} vs {len(theirs)} tokens; only in the model: "
        f"{only_model[:5]}, only in the data: {only_data[:5]}, other ids: {moved[:5]})"
    )


def image_problem(model_dir: Path, processor_dir: Path) -> str | None:
    mine = _json(model_dir / "preprocessor_config.json") or {}
    theirs = _json(processor_dir / "preprocessor_config.json") or {}
    diff = [k for k in IMAGE_KEYS if mine.get(k) != theirs.get(k)]
    if not diff:
        return None
    return "its image processor differs from the workdir's: " + ", ".join(
        f"{k} {mine.get(k)!r} vs {theirs.get(k)!r}" for k in diff
    )


def check_model_matches(model_dir: str | Path, shards_dir: str | Path, *, check_data: bool = True) -> None:
    """Raise ``ConfigError`` naming what differs when ``model_dir`` cannot be audited on ``shards_dir``."""
    model_dir, shards_dir = Path(model_dir), Path(shards_dir)
    manifest = _json(shards_dir / "manifest.json")
    if manifest is None:
        raise ConfigError(f"{shards_dir}: no shards manifest (run `make run` or `unlearn data shard` first)")
    processor = shards_dir / "processor"
    for problem in (tokenizer_problem(model_dir, processor), image_problem(model_dir, processor)):
        if problem:
            raise ConfigError(f"--model {model_dir}: {problem}; audit it with the workdir it was trained on")
    if not check_data:
        return
    prov = read_provenance(model_dir)
    if prov is None:
        raise ConfigError(
            f"--model {model_dir}: no {PROVENANCE_FILE} (written when a training job of this project exports "
            "a model), so the data it was trained on is unknown; pass --skip-data-check to audit it against "
            "the workdir's data anyway"
        )
    if prov.get("shards_fingerprint") != manifest.get("fingerprint"):
        raise ConfigError(
            f"--model {model_dir}: trained on other data (shards {str(prov.get('shards_fingerprint'))[:16]}) than "
            f"the workdir's ({str(manifest.get('fingerprint'))[:16]}); audit it with the workdir it was trained on"
        )
