"""Gradient difference: L = -gamma * NLL_f + alpha * NLL_r."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import GradDiffParams
from unlearn_core.methods.base import UnlearnMethod, nll


class GradDiff(UnlearnMethod):
    name = "grad_diff"
    Params = GradDiffParams
    params: GradDiffParams
    retain_weight = "alpha"

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        nll_f = nll(model, forget)
        return -self.params.gamma * nll_f, {"forget_nll": float(nll_f.detach())}
