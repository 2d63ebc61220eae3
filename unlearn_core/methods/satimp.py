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

from torch import Tensor

from unlearn_core.method_params import SatImpParams
from unlearn_core.methods.wga import WGA


class SatImp(WGA):
    """WGA's weighted ascent with the saturation-importance weight (``weight`` below)."""

    name = "satimp"
    Params = SatImpParams
    params: SatImpParams

    def weight(self, prob: Tensor) -> Tensor:
        """p^beta1 * (1 - p)^beta2."""
        return prob.pow(self.params.beta1) * (1.0 - prob).pow(self.params.beta2)
