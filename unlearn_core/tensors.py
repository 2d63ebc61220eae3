"""The two torch helpers every layer shares: strip DDP / DeepSpeed wrappers, move a batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model under DDP / DeepSpeed wrappers (their ``.module``), so parameter names and
    state-dict keys are the model's own."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    return model


def move_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Every tensor of a batch on ``device`` (other values unchanged)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}
