"""Refusal (IDK) tuning, a PUBG baseline: NLL of a refusal answer on the forget prompts (the
``idk_`` view) [+ alpha * NLL_r]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import RejectParams
from unlearn_core.methods.base import ShardView, UnlearnMethod, add_retain_nll, nll
from unlearn_core.prompts import REFUSAL_ANSWERS


def refusal_answers(rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, str]:
    """Every forget row gets the refusal answer (the same one: the model learns one way to decline)."""
    return {r["sample_id"]: REFUSAL_ANSWERS[0] for r in rows if r["split"] == "forget"}


class Reject(UnlearnMethod):
    name = "reject"
    Params = RejectParams
    params: RejectParams
    views = ("idk_",)
    shard_views = (ShardView("idk_", refusal_answers),)
    retain_weight = "alpha"
    prefix = "idk_"
    stat = "idk_nll"

    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        value = nll(model, forget, self.prefix)
        stats = {self.stat: float(value.detach())}
        return add_retain_nll(value, model, retain, self.params.alpha, stats), stats
