"""Stage 4, sweeps: Ray Tune over one method's search space, each trial the training-job driver."""

from pipelines.sweep.driver import run_sweep

__all__ = ["run_sweep"]
