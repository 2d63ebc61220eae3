"""A one-worker training run in the calling process: Ray Train V2's local mode, completed.

A sweep trial whose training needs one worker gains nothing from Ray Train's actors (a controller,
a worker, a dataset coordinator per stream): each is a new process that imports the training stack,
which cost a demo trial more time than its steps (bench/trial_cost.py). Local mode runs the same
``train_loop_per_worker`` in the caller with the same ``ray.train`` API (context, dataset shards,
``prepare_model``, ``report``); what it leaves out, this module adds, so a job behaves as it does
under a ``TorchTrainer``: every reported checkpoint is copied to ``storage_path/name/checkpoint_N``
(the last ``KEEP_CHECKPOINTS`` kept), a run started again under the same name resumes from its latest
one, the job's Train callbacks see every report (live MLflow curves, progress, Tune's ASHA reports),
and a failed attempt starts again from the last checkpoint up to ``train.max_failures`` times.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2  # as the TorchTrainer's CheckpointConfig(num_to_keep=2)
_CKPT = re.compile(r"checkpoint_(\d+)$")


def saved_checkpoints(run_dir: Path) -> list[Path]:
    """The run's persisted checkpoints, oldest first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint_*") if (m := _CKPT.search(p.name))]
    return [p for _, p in sorted(found)]


class InProcessTrainFnUtils(LocalTrainFnUtils):
    """Local mode's train-function utilities, plus persisted checkpoints and the run's callbacks."""

    def __init__(
        self, name: str, run_dir: Path, datasets: dict[str, Any], callbacks: list[Any]
    ) -> None:
        super().__init__(experiment_name=name, dataset_shards=datasets)
        self.run_dir = run_dir
        self.callbacks = callbacks
        saved = saved_checkpoints(run_dir)
        self._last_checkpoint = ray.train.Checkpoint.from_directory(str(saved[-1])) if saved else None
        self._next_index = int(_CKPT.search(saved[-1].name).group(1)) + 1 if saved else 0  # type: ignore[union-attr]

    def report(self, metrics: dict[str, Any], checkpoint: Any = None, *args: Any, **kwargs: Any) -> None:
        persisted = self._persist(checkpoint) if checkpoint is not None else None
        self._last_metrics = metrics
        if persisted is not None:
            self._last_checkpoint = persisted
        for callback in self.callbacks:
            callback.after_report(run_context=None, metrics=[metrics], checkpoint=persisted)

    def _persist(self, checkpoint: Any) -> Any:
        """Copy the worker's checkpoint folder (a temporary one) into the run's storage."""
        dest = self.run_dir / f"checkpoint_{self._next_index:06d}"
        self._next_index += 1
        shutil.copytree(checkpoint.path, dest, dirs_exist_ok=True)
        for old in saved_checkpoints(self.run_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return ray.train.Checkpoint.from_directory(str(dest))


def fit_in_process(
    train_fn: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    datasets: dict[str, Any],
    *,
    name: str,
    storage_path: str,
    callbacks: list[Any],
    max_failures: int = 0,
) -> ray.train.Result:
    """Run ``train_fn(config)`` here as rank 0 of 1; returns a ``Result`` like ``TorchTrainer.fit``'s
    (the last report's metrics and the latest persisted checkpoint). ``max_failures`` -1: retry forever."""
    run_dir = Path(storage_path) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        utils = InProcessTrainFnUtils(name, run_dir, datasets, callbacks)
        set_train_fn_utils(utils)
        try:
            train_fn(config)
            break
        except Exception as err:
            attempt += 1
            if max_failures != -1 and attempt > max_failures:
                raise
            log.warning("%s failed (%s); attempt %d starts from its last checkpoint", name, err, attempt + 1)
        finally:
            set_train_fn_utils(None)  # type: ignore[arg-type]
    return ray.train.Result(
        metrics=utils._get_last_metrics(), checkpoint=utils.get_checkpoint(), path=str(run_dir), error=None
    )
