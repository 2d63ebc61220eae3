"""SatImp: saturation-importance loss reweighting (Yang et al. 2025, "Exploring Criteria of Loss
Reweighting to Enhance LLM Unlearning", arXiv 2505.11953; open-unlearning
``src/trainer/unlearn/satimp.py``, ``compute_satimp_loss``).

    w_t = p_t^beta1 * (1 - p_t)^beta2   (detached),   p_t = p_theta(y_t|x, y_<t)
    L = -gamma * mean_t w_t * (-log p_t)  [+ alpha * NLL_r]

over the answer tokens t. The paper's two criteria: *saturation* (p^beta1: tokens the model no longer
predicts are already forgotten, stop pushing them) and *importance* ((1-p)^beta2: tokens it predicts
with near certainty carry little of the entity's knowledge, e.g. function words), so the ascent
concentrates on the tokens in between. The VLM choice: as WGA, the image-conditioned answer-token
probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from torch import Tensor, nn

from unlearn_core.method_params import SatImpParams
from unlearn_core.methods.base import UnlearnMethod, add_retain_nll, forward_logits
from unlearn_core.methods.losses import weighted_answer_nll


class SatImp(UnlearnMethod):
    name = "satimp"
    Params = SatImpParams
    params: SatImpParams
    needs_retain = True

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.needs_retain = self.params.alpha > 0

    def weight(self, prob: Tensor) -> Tensor:
        """p^beta1 * (1 - p)^beta2."""
        return prob.pow(self.params.beta1) * (1.0 - prob).pow(self.params.beta2)

    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        logits, labels = forward_logits(model, forget)
        weighted = weighted_answer_nll(logits, labels, self.weight)
        stats = {"weighted_forget_nll": float(weighted.detach())}
        return add_retain_nll(-self.params.gamma * weighted, model, retain, self.params.alpha, stats), stats
