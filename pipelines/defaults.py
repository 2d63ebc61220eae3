"""The starting configs of the CLI commands on the embedded benchmark (YAML files beside this module).

``finetune.yaml`` for the vanilla fine-tune; ``unlearn.yaml`` for `unlearn run`, `unlearn sweep` and the
demo alike. Method parameters are not here: each method's own defaults (``unlearn_core.methods``) apply.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def default_config(command: str) -> Path:
    """``finetune`` or ``unlearn``: the YAML file a command starts from when no --config is given."""
    return CONFIG_DIR / f"{command}.yaml"
