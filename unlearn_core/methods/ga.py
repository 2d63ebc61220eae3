"""Gradient ascent: L = -NLL_f (maximise the forget answers' NLL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import GAParams
from unlearn_core.methods.base import UnlearnMethod, nll


class GradientAscent(UnlearnMethod):
    name = "ga"
    Params = GAParams
    params: GAParams

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        nll_f = nll(model, forget)
        return -nll_f, {"forget_nll": float(nll_f.detach())}
