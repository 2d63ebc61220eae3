"""Random-label tuning, a PUBG baseline: NLL of another entity's answer on the forget prompts (the
``rand_`` view) [+ alpha * NLL_r]."""

from __future__ import annotations

from unlearn_core.methods.reject import Reject, RejectParams


class RandomLabelParams(RejectParams):
    """Same fields as ``reject``: alpha, the weight of the retain NLL term."""


class RandomLabel(Reject):
    name = "random"
    Params = RandomLabelParams
    params: RandomLabelParams
    views = ("rand_",)
    prefix = "rand_"
    stat = "rand_nll"
