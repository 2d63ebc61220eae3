"""IdkDPO: DPO (Rafailov et al. 2023) with a refusal as the preferred answer and the true answer as
the rejected one, against the frozen model before unlearning (open-unlearning
``src/trainer/unlearn/dpo.py`` with its ``idk`` alternate answers; TOFU's "IDK + DPO" baseline).

    L = -(2/beta) * mean_b log sigmoid(beta * [(log p_theta(w_b|x_b) - log p_ref(w_b|x_b))
                                              - (log p_theta(y_b|x_b) - log p_ref(y_b|x_b))])
        [+ alpha * NLL_r]    (the forget term weighted by gamma)

``w_b`` is the refusal (the ``idk_`` view ``reject`` writes into the shards), ``y_b`` the true answer
(the plain view), sequence log-probs summed over the answer tokens. The VLM choice: both responses
are conditioned on the same prompt, the forget row's image and question (the views share the row's
pixels), so the preference is between two answers to one image-grounded question; a refusal
preferred on a prompt without the image would teach "refuse when no image is shown" instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from unlearn_core.method_params import IdkDPOParams
from unlearn_core.methods.base import ShardView, UnlearnMethod, forward_logits, ref_logits
from unlearn_core.methods.losses import sequence_logprob
from unlearn_core.methods.reject import refusal_answers

PREFERRED = "idk_"  # the refusal view; the plain view "" holds the rejected true answer


def dpo_loss(chosen_ratio: Tensor, rejected_ratio: Tensor, beta: float) -> Tensor:
    """-(2/beta) * mean log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), open-unlearning's
    scaling (at theta = ref it is (2/beta) log 2, like NPO)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()


class IdkDPO(UnlearnMethod):
    name = "idk_dpo"
    Params = IdkDPOParams
    params: IdkDPOParams
    needs_ref = True
    retain_weight = "alpha"
    views = ("", PREFERRED)
    shard_views = (ShardView(PREFERRED, refusal_answers),)

    def log_ratio(
        self, model: nn.Module, ref: nn.Module | None, forget: Mapping[str, Any], prefix: str
    ) -> Tensor:
        """[B] log p_theta(answer|x) - log p_ref(answer|x) on one view."""
        logits, labels = forward_logits(model, forget, prefix)
        r_logits, _ = ref_logits(ref, forget, prefix)
        return sequence_logprob(logits, labels) - sequence_logprob(r_logits, labels)

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        chosen = self.log_ratio(model, ref, forget, PREFERRED)
        rejected = self.log_ratio(model, ref, forget, "")
        pref = dpo_loss(chosen, rejected, p.beta)
        stats = {
            "dpo": float(pref.detach()),
            "idk_logratio": float(chosen.mean().detach()),
            "forget_logratio": float(rejected.mean().detach()),
        }
        return p.gamma * pref, stats
