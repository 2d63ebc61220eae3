"""Where a saved model came from: a small JSON beside its weights, written when a training job exports it.

``unlearn audit`` reads it to refuse a model trained on other data than the workdir's (its shards'
fingerprint) and to link the audit to the run that trained the model. Not part of the weights'
sha256 (which covers ``*.safetensors`` only); logged and pulled with the model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "lvlm_unlearn.json"


def write_provenance(model_dir: str | Path, **fields: Any) -> Path:
    path = Path(model_dir) / PROVENANCE_FILE
    path.write_text(json.dumps(fields, indent=1, sort_keys=True))
    return path


def read_provenance(model_dir: str | Path) -> dict[str, Any] | None:
    """The model folder's provenance, or None when it has none (a model exported elsewhere or earlier)."""
    path = Path(model_dir) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
