"""Cross-entropy unlearning (CE-U; Yang 2025, "CE-U: Cross Entropy Unlearning", arXiv 2503.01224;
open-unlearning ``src/trainer/unlearn/ceu.py``).

At each answer position t the target distribution is the model's own, detached, with the true token
removed: ``q_t = softmax(z_t with z_t[y_t] = -inf)``, and

    L = mean_t CE(q_t, softmax(z_theta(x)_t))  [+ alpha * NLL_r]

over the answer tokens, leaving out the first ``ignore_first_n_answer_tokens`` of each answer (the
paper's footnote: the first token of an answer is often generic). Its gradient on the logits is
``softmax(z) - q``: the true token's probability is pushed to zero and the rest keep their relative
odds, a bounded objective unlike gradient ascent. The VLM choice: the model's own image-conditioned
distribution is the target; image tokens carry no label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from unlearn_core.method_params import CEUParams
from unlearn_core.methods.base import UnlearnMethod, forward_logits
from unlearn_core.methods.losses import answer_mask, select_answer_positions, soft_target_ce


def without_true_token(logits: Tensor, targets: Tensor) -> Tensor:
    """softmax of the detached logits with each position's target token at -inf: [N, V]."""
    z = logits.detach().float().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    return torch.softmax(z, dim=-1)


def answer_rank(labels: Tensor) -> Tensor:
    """0-based index of every answer position within its own answer, in ``select_answer_positions``
    order: [N]."""
    mask = answer_mask(labels)
    return (mask.cumsum(1) - 1)[mask]


class CEU(UnlearnMethod):
    name = "ceu"
    Params = CEUParams
    params: CEUParams
    retain_weight = "alpha"

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        logits, labels = forward_logits(model, forget)
        sel, targets, _ = select_answer_positions(logits, labels)
        keep = answer_rank(labels) >= self.params.ignore_first_n_answer_tokens
        if not keep.any():
            ce = logits.sum() * 0.0
        else:
            ce = soft_target_ce(sel[keep], without_true_token(sel[keep], targets[keep])).mean()
        stats = {"ceu": float(ce.detach())}
        return ce, stats
