"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
LLM Unlearning"): NPO without a reference model, on the length-normalised log-likelihood.

L = gamma * -(2/beta) * mean_b log sigmoid(-(beta/|y_b|) * log p_theta(y_b|x_b) - beta*delta)  [+ alpha * NLL_r]

``|y_b|`` is the number of answer tokens of sequence b and ``delta`` the reward margin. The
normalisation stops long answers from dominating the ascent, and no frozen copy is needed.
(open-unlearning writes the same term as -(2/beta) log sigmoid(beta * (NLL_sum/|y| - delta)), and
weighs it with gamma, 0.125 in its SimNPO config, against alpha * NLL_r.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn_core.method_params import SimNPOParams
from unlearn_core.methods.base import UnlearnMethod, forward_logits
from unlearn_core.methods.losses import answer_mask, sequence_logprob


def simnpo_loss(logp: Tensor, lengths: Tensor, beta: float, delta: float) -> Tensor:
    """-(2/beta) * mean log sigmoid(-beta * logp / |y| - beta * delta); rows without answer tokens
    count with |y| = 1 (their logp is 0)."""
    per_token = logp / lengths.clamp_min(1).to(logp.dtype)
    return -(2.0 / beta) * F.logsigmoid(-beta * per_token - beta * delta).mean()


class SimNPO(UnlearnMethod):
    name = "simnpo"
    Params = SimNPOParams
    params: SimNPOParams
    retain_weight = "alpha"

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        logits, labels = forward_logits(model, forget)
        lp = sequence_logprob(logits, labels)
        lengths = answer_mask(labels).sum(1)
        forget_term = simnpo_loss(lp, lengths, p.beta, p.delta)
        with torch.no_grad():
            stats = {
                "simnpo": float(forget_term),
                "forget_nll_per_token": float((-lp / lengths.clamp_min(1)).mean()),
            }
        return p.gamma * forget_term, stats
