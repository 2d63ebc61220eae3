"""Default configs of the CLI commands on the embedded benchmark (YAML files beside this module).

Per-method defaults are the weights that worked on the synthetic benchmark (README results); the
sweeps (tune_spaces/) search around them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "ga": {},
    "grad_diff": {},
    "kl": {},
    "npo": {},
    "reject": {},
    "random": {},
    "mmunlearner": {},
    "pubg": {"method.params.w_ret": 1.0},
}


def default_config(command: str) -> Path:
    return CONFIG_DIR / f"{command}.yaml"


def method_defaults(name: str) -> dict[str, Any]:
    return dict(METHOD_DEFAULTS.get(name, {}))
