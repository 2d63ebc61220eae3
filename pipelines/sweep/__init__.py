"""Stage 4, sweeps: Ray Tune over one method's search space, each trial the training-job driver.

``run_sweep`` is imported on first use: the CLI validates a space (``pipelines.sweep.tune_config``) before
anything heavy loads, and importing the driver pulls in Ray Tune, MLflow and torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_sweep"]


def __getattr__(attribute: str) -> Any:
    if attribute == "run_sweep":
        from pipelines.sweep.driver import run_sweep

        return run_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
