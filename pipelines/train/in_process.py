"""A one-worker training run in the calling process (``train.launcher: in_process``).

A sweep trial whose training needs one worker gains nothing from Ray Train's actors (a controller,
a worker, a dataset coordinator per stream): each is a new process that imports the training stack,
and together they cost a demo trial more time than its steps (bench/trial_cost.py). Here the same
worker function (``trainer.run_worker``) runs in the caller as rank 0 of 1, and the job behaves as it
does under a ``TorchTrainer``: every reported checkpoint is copied to ``storage_path/name/checkpoint_N``
(the last ``KEEP_CHECKPOINTS`` kept), a run started again under the same name resumes from its latest
one, the job's Train callbacks see every report (progress, live MLflow curves, Tune's ASHA reports),
and a failed attempt starts again from the last checkpoint up to ``train.max_failures`` times.
(Ray Train's own local mode, ``num_workers=0``, has none of these, and Ray refuses its ``ray.train``
functions inside a Tune trial.)
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ray.train
import torch

from pipelines.train.session import TrainSession
from unlearn_core.config import ConfigError

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2  # as the TorchTrainer's CheckpointConfig(num_to_keep=2)
_CKPT = re.compile(r"^checkpoint_(\d+)$")


def saved_checkpoints(run_dir: Path) -> list[Path]:
    """The run's persisted checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint_*") if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


class InProcessSession:
    """Rank 0 of 1 in this process: its datasets, its run folder's checkpoints, its callbacks."""

    rank, world_size, local_rank = 0, 1, 0

    def __init__(
        self, run_dir: Path, datasets: dict[str, Any], callbacks: list[Any], use_gpu: bool = False
    ) -> None:
        self.run_dir = run_dir
        self.datasets = datasets
        self.callbacks = callbacks
        self.use_gpu = use_gpu
        self.last_metrics: dict[str, Any] | None = None

    def device(self) -> torch.device:
        """The GPU Ray gave this process (CUDA_VISIBLE_DEVICES, as for a Train worker), else the CPU."""
        if not self.use_gpu:
            return torch.device("cpu")
        if not torch.cuda.is_available():  # e.g. `unlearn run` on a cluster's CPU head
            raise ConfigError(
                "train.use_gpu: this process sees no GPU to train on in process; "
                "set train.launcher=ray_train to run the worker on a GPU node"
            )
        return torch.device("cuda:0")

    def latest(self) -> Path | None:
        saved = saved_checkpoints(self.run_dir)
        return saved[-1] if saved else None

    def resume_folder(self, stack: ExitStack) -> Path | None:
        return self.latest()

    def dataset_shard(self, name: str) -> Any:
        if name not in self.datasets:
            raise KeyError(f"the job has no {name!r} stream (streams: {sorted(self.datasets)})")
        return self.datasets[name]

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict[str, Any]) -> torch.nn.Module:
        return model.to(self.device())  # one worker: nothing to wrap

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = self._persist(folder) if folder is not None else None
        self.last_metrics = metrics
        for callback in self.callbacks:  # Train's report hook; worker-group hooks have no group here
            if hasattr(callback, "after_report"):
                callback.after_report(run_context=None, metrics=[metrics], checkpoint=checkpoint)

    def _persist(self, folder: Path) -> ray.train.Checkpoint:
        """Copy the worker's (temporary) checkpoint folder into the run folder; keep the newest ones.
        Written under a temporary name and renamed, so a crash never leaves a half checkpoint to resume."""
        last = self.latest()
        index = int(_CKPT.match(last.name).group(1)) + 1 if last is not None else 0  # type: ignore[union-attr]
        dest = self.run_dir / f"checkpoint_{index:06d}"
        partial = self.run_dir / f".partial-{dest.name}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(folder, partial)
        partial.rename(dest)
        for old in saved_checkpoints(self.run_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return ray.train.Checkpoint.from_directory(str(dest))


def fit_in_process(
    worker_fn: Callable[[dict[str, Any], TrainSession], None],
    config: dict[str, Any],
    datasets: dict[str, Any],
    *,
    name: str,
    storage_path: str,
    callbacks: list[Any],
    max_failures: int = 0,
    use_gpu: bool = False,
) -> ray.train.Result:
    """Run ``worker_fn(config, session)`` here as rank 0 of 1; returns a ``Result`` like
    ``TorchTrainer.fit``'s (the last report's metrics, the latest checkpoint, the run folder).
    ``max_failures`` -1: start again after every failure."""
    run_dir = Path(storage_path) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        session = InProcessSession(run_dir, datasets, callbacks, use_gpu=use_gpu)
        try:
            worker_fn(config, session)
            break
        except Exception as err:
            failures += 1
            if max_failures != -1 and failures > max_failures:
                raise
            log.warning("%s failed (%s); starting again from its last checkpoint (%d)", name, err, failures)
    latest = session.latest()
    return ray.train.Result(
        metrics=session.last_metrics,
        checkpoint=ray.train.Checkpoint.from_directory(str(latest)) if latest is not None else None,
        path=str(run_dir),
        error=None,
    )
