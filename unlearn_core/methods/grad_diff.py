"""Gradient difference: L = -gamma * NLL_f + alpha * NLL_r."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import GradDiffParams
from unlearn_core.methods.base import UnlearnMethod, add_retain_nll, nll


class GradDiff(UnlearnMethod):
    name = "grad_diff"
    Params = GradDiffParams
    params: GradDiffParams
    retain_weight = "alpha"

    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        nll_f = nll(model, forget)
        stats = {"forget_nll": float(nll_f.detach())}
        loss = add_retain_nll(-p.gamma * nll_f, model, retain, p.alpha, stats)
        return loss, stats
