"""What the training worker asks of whoever runs it: its rank, device, data, resume point and reports.

Under a ``TorchTrainer`` these come from ``ray.train`` (:class:`RayTrainSession`); a one-worker job
run in the calling process (``train.launcher: in_process``, e.g. inside a Tune trial, where Ray
refuses the ``ray.train`` functions) gets them from ``pipelines.train.in_process``.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import torch


class TrainSession(Protocol):
    rank: int
    world_size: int
    local_rank: int

    def device(self) -> torch.device: ...

    def resume_folder(self, stack: ExitStack) -> Path | None:
        """This run's latest checkpoint as a local folder (kept open on ``stack``), or None."""
        ...

    def dataset_shard(self, name: str) -> Any:
        """This worker's share of stream ``name`` (anything with Ray Data's ``iter_torch_batches``)."""
        ...

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict[str, Any]) -> torch.nn.Module: ...

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        """Report ``metrics`` and, when given, the checkpoint in ``folder`` (a temporary folder: the
        session copies it before it returns)."""
        ...


class RayTrainSession:
    """A worker of a Ray Train run."""

    def __init__(self) -> None:
        import ray.train

        tc = ray.train.get_context()
        self.rank, self.world_size, self.local_rank = (
            tc.get_world_rank(),
            tc.get_world_size(),
            tc.get_local_rank(),
        )

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def resume_folder(self, stack: ExitStack) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return Path(stack.enter_context(ckpt.as_directory())) if ckpt is not None else None

    def dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def prepare_model(self, model: torch.nn.Module, ddp_kwargs: dict[str, Any]) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(
            model,
            parallel_strategy="ddp" if self.world_size > 1 else None,
            parallel_strategy_kwargs=ddp_kwargs,
        )

    def report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)
