"""UNDIAL: self-distillation with adjusted logits (Dong et al. 2024, arXiv 2402.10052; open-unlearning
``src/trainer/unlearn/undial.py``, ``compute_undial_loss``).

The student is distilled toward the frozen model's own next-token distribution with the logit of the
token to forget lowered by ``beta``:

    q_t = softmax(z_ref(x)_t - beta * onehot(y_t)),   L = gamma * mean_t CE(q_t, softmax(z_theta(x)_t))
        [+ alpha * NLL_r]

over the answer positions t. Only the target token's probability drops; every other token keeps the
teacher's relative odds, which is why the paper finds it stable where gradient ascent collapses.

Differences from open-unlearning's code: the mean is over answer positions only (it averages over
every position of the sequence, prompt and padding included, where the label -100 lowers the logit of
vocabulary entry V-100); answer positions are where the paper's "tokens to unlearn" are. The VLM
choice: the teacher sees the same image and question as the student (one view), so the adjusted
target is the model's own image-conditioned answer distribution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from unlearn_core.method_params import UNDIALParams
from unlearn_core.methods.base import UnlearnMethod, forward_logits, ref_logits
from unlearn_core.methods.losses import select_answer_positions, soft_target_ce


def adjusted_targets(teacher_logits: Tensor, targets: Tensor, beta: float) -> Tensor:
    """softmax(teacher logits - beta on each position's target token): [N, V] (no gradient)."""
    z = teacher_logits.detach().float().clone()
    z.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(z[:, :1], -beta))
    return torch.softmax(z, dim=-1)


class UNDIAL(UnlearnMethod):
    name = "undial"
    Params = UNDIALParams
    params: UNDIALParams
    needs_ref = True
    retain_weight = "alpha"

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        logits, labels = forward_logits(model, forget)
        r_logits, _ = ref_logits(ref, forget)
        sel, targets, _ = select_answer_positions(logits, labels)
        if targets.numel() == 0:
            distill = logits.sum() * 0.0
        else:
            r_sel, _, _ = select_answer_positions(r_logits, labels)
            distill = soft_target_ce(sel, adjusted_targets(r_sel, targets, p.beta)).mean()
        stats = {"undial_ce": float(distill.detach())}
        return p.gamma * distill, stats
