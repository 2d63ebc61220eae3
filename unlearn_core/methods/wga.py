"""Weighted gradient ascent (WGA; Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A Gradient
Perspective and Go Beyond", arXiv 2502.19301; open-unlearning ``src/trainer/unlearn/wga.py``,
``compute_wga_loss``).

    L = -gamma * mean_t p_theta(y_t|x, y_<t)^beta * (-log p_theta(y_t|x, y_<t))  [+ alpha * NLL_r]

over the answer tokens t, the weight ``p^beta`` detached. Gradient ascent weighted by the model's
own confidence: tokens it already finds unlikely (forgotten) stop pulling, so the ascent does not
run away on them the way plain GA does. The VLM choice: the weights are the image-conditioned
answer-token probabilities (the image in the prompt; image tokens carry no label).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import WGAParams
from unlearn_core.methods.base import UnlearnMethod, forward_logits
from unlearn_core.methods.losses import weighted_answer_nll


class WGA(UnlearnMethod):
    """Also the base of SatImp, which has its own ``weight`` (and Params)."""

    name = "wga"
    Params = WGAParams
    params: WGAParams
    retain_weight = "alpha"

    def weight(self, prob: Tensor) -> Tensor:
        """p^beta."""
        return prob.pow(self.params.beta)

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        logits, labels = forward_logits(model, forget)
        weighted = weighted_answer_nll(logits, labels, self.weight)
        stats = {"weighted_forget_nll": float(weighted.detach())}
        return -self.params.gamma * weighted, stats
