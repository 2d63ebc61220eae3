"""Refusal (IDK) tuning, a PUBG baseline: NLL of a refusal answer on the forget prompts (the
``idk_`` view) [+ alpha * NLL_r]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from unlearn_core.method_params import RejectParams
from unlearn_core.methods.base import ShardView, UnlearnMethod, nll
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

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        value = nll(model, forget, self.prefix)
        return value, {self.stat: float(value.detach())}
