"""Negative Preference Optimization (Zhang et al. 2024).

L = -(2/beta) * mean_b log sigmoid(-beta * (log p_theta(y_b|x_b) - log p_ref(y_b|x_b)))  [+ alpha * NLL_r]

with the sequence log-prob = sum of the answer-token log-probs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import NPOParams
from unlearn_core.methods.base import UnlearnMethod, forward_logits, ref_logits
from unlearn_core.methods.losses import npo_loss, sequence_logprob


class NPO(UnlearnMethod):
    name = "npo"
    Params = NPOParams
    params: NPOParams
    needs_ref = True
    retain_weight = "alpha"

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        logits, labels = forward_logits(model, forget)
        r_logits, _ = ref_logits(ref, forget)
        lp = sequence_logprob(logits, labels)
        lp_ref = sequence_logprob(r_logits, labels)
        loss = npo_loss(lp, lp_ref, p.beta)
        return loss, {"npo": float(loss.detach()), "forget_logratio": float((lp - lp_ref).mean().detach())}
