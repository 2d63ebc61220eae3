"""Gradient difference: L = -gamma * NLL_f + alpha * NLL_r."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field
from torch import Tensor, nn

from unlearn_core.methods.base import StrictParams, UnlearnMethod, add_retain_nll, nll


class GradDiffParams(StrictParams):
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the forget ascent term")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term")


class GradDiff(UnlearnMethod):
    name = "grad_diff"
    Params = GradDiffParams
    params: GradDiffParams
    needs_retain = True

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.needs_retain = self.params.alpha > 0

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
