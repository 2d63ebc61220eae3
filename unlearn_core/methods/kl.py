"""KL minimisation: L = -gamma * NLL_f + alpha * KL(p_ref || p_theta) on the retain answer tokens.

The KL is the full-vocabulary forward KL at every retain answer position (the distribution over the
next token given the same prefix), averaged over the answer tokens of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import KLParams
from unlearn_core.methods.base import UnlearnMethod, forward_logits, nll, ref_logits
from unlearn_core.methods.losses import answer_mask, kl_full


def retain_kl(model: nn.Module, ref: nn.Module | None, retain: Mapping[str, Any]) -> Tensor:
    """Mean over retain answer tokens of KL(p_ref(.|prefix) || p_theta(.|prefix))."""
    logits, labels = forward_logits(model, retain)
    r_logits, _ = ref_logits(ref, retain)
    mask = answer_mask(labels)
    if not mask.any():
        return logits.sum() * 0.0
    return kl_full(r_logits[:, :-1][mask], logits[:, :-1][mask]).mean()


class KLMin(UnlearnMethod):
    name = "kl"
    Params = KLParams
    params: KLParams
    retain_weight = "alpha"

    def configure(self) -> None:
        self.needs_ref = self.needs_retain  # the retain term is the KL to the reference model

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        nll_f = nll(model, forget)
        return -self.params.gamma * nll_f, {"forget_nll": float(nll_f.detach())}

    def retain_loss(
        self, model: nn.Module, retain: Mapping[str, Any] | None, ref: nn.Module | None
    ) -> tuple[Tensor | None, dict[str, float]]:
        if self.params.alpha == 0:
            return None, {}
        kl = retain_kl(model, ref, self._require_retain(retain))
        return self.params.alpha * kl, {"retain_kl": float(kl.detach())}
