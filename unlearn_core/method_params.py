"""Every method's hyper-parameters as pydantic models, importable without torch.

The command line, the config schema and the Tune spaces validate ``method.params`` against these
before anything heavy loads: a bad value is refused in well under a second. Each method's module
sets ``Params`` to its model here, and ``method_registry`` names the pair on one line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unlearn_core.config import ConfigError
from unlearn_core.prompts import GUIDANCE_TEMPLATES


class StrictParams(BaseModel):
    """Base of every method's Params: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Trainer settings (dotted config keys) this method's defaults were measured with, where they
    # differ from the starting config's (pipelines/configs/unlearn.yaml): `unlearn run --method M` and
    # `unlearn sweep` start from them (docs/methods.md, "Where the defaults come from").
    train_defaults: ClassVar[dict[str, Any]] = {}

    def own_optimizer_steps(self) -> bool:
        """Whether the method, with these values, takes its own optimizer steps (saliency-masked or
        robust forget updates): then no gradient accumulation and no DeepSpeed engine
        (``method_registry.check_supported``; the method's ``custom_step`` says the same)."""
        return False

    def own_steps_reason(self) -> str:
        """Why the method takes its own optimizer steps (named in the refusals)."""
        return "saliency-masked updates"

    def plain_steps_hint(self) -> str:
        """How to give the own steps up, appended to a refusal (empty: there is no way)."""
        return ""


class ForgetRobustness(StrictParams):
    """Relearning-resistant forget updates (``unlearn_core/methods/robust.py``, docs/methods.md), for
    every method whose loss is a forget term plus a retain term. All off by default; any of them on
    makes the method take its own optimizer steps (DDP, no gradient accumulation, no DeepSpeed)."""

    sam_rho: float = Field(0.0, ge=0, le=10, description="SAM radius on the forget term (0 = off)")
    rs_sigma: float = Field(
        0.0, ge=0, le=1, description="randomised smoothing: weight-noise std on the forget term (0 = off)"
    )
    rs_samples: int = Field(3, ge=1, le=16, description="randomised smoothing: noise draws per step")
    tar_steps: int = Field(
        0, ge=0, le=16, description="tamper resistance: simulated relearning steps per update (0 = off)"
    )
    tar_lr: float = Field(5e-4, gt=0, le=1.0, description="tamper resistance: the simulated attacker's lr")
    tar_weight: float = Field(
        1.0, ge=0, le=100, description="tamper resistance: weight of the forget term after the attack"
    )
    tar_attack: Literal["forget", "retain"] = Field(
        "forget",
        description="tamper resistance: the attacker's rows (half the forget batch, or the retain batch)",
    )

    def robust_on(self) -> bool:
        """Whether any robust forget update is on (``methods.robust.Robustness.active``)."""
        return self.sam_rho > 0 or self.rs_sigma > 0 or self.tar_steps > 0

    def own_optimizer_steps(self) -> bool:
        return self.robust_on()

    def own_steps_reason(self) -> str:
        return "robust (SAM / smoothing / tamper-resistance) forget updates"

    def plain_steps_hint(self) -> str:
        if self.robust_on():
            return " or method.params.sam_rho=0, rs_sigma=0 and tar_steps=0 (no robust forget update)"
        return ""

    @model_validator(mode="after")
    def _one_smoothing(self) -> ForgetRobustness:
        if self.sam_rho > 0 and self.rs_sigma > 0:
            raise ValueError(
                f"sam_rho={self.sam_rho} and rs_sigma={self.rs_sigma}: SAM and randomised smoothing are "
                "alternatives; set one of them to 0"
            )
        return self


class GAParams(ForgetRobustness):
    """Plain gradient ascent: only the robustness options (lr and steps belong to the trainer)."""


class GradDiffParams(ForgetRobustness):
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the forget ascent term")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term")


class KLParams(ForgetRobustness):
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the forget ascent term")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain KL term")


class NPOParams(ForgetRobustness):
    beta: float = Field(0.1, gt=0, le=10, description="inverse temperature of the NPO loss")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term (0 = pure NPO)")


class SimNPOParams(ForgetRobustness):
    beta: float = Field(4.5, gt=0, le=100, description="inverse temperature of the SimNPO loss")
    delta: float = Field(0.0, ge=0, le=100, description="reward margin")
    # open-unlearning's configs/trainer/SimNPO.yaml: gamma 0.125 (the forget term is 8x lighter than
    # the retain NLL at alpha 1).
    gamma: float = Field(0.125, ge=0, le=100, description="weight of the SimNPO forget term")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term (0 = pure SimNPO)")


class RejectParams(ForgetRobustness):
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term")


class RandomLabelParams(RejectParams):
    """Same fields as ``reject``: alpha, the weight of the retain NLL term."""


class MMUnlearnerParams(StrictParams):
    mask: Literal["vision", "language", "both"] = Field("both", description="module group to unlearn")
    mask_path: str | None = Field(None, description="safetensors SaliencyMask file")
    gamma: float = Field(1.0, gt=0, le=1e6, description="Fisher-ratio threshold of the mask")
    forget_every: int | None = Field(
        None, ge=1, le=100_000, description="k: a forget step every k-th step (None = retain/forget batches)"
    )
    forget_max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="clip of the ascent step")
    forget_lr: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="peak lr of the ascent step, on the trainer's schedule (None = train.lr)",
    )
    restore_masked_out: bool = Field(True, description="copy masked-out entries back after the ascent step")

    def own_optimizer_steps(self) -> bool:
        return True


class PUBGParams(ForgetRobustness):
    w_ga: float = Field(0.1, ge=0, le=10, description="weight of the forget term on the private answers")
    forget_term: Literal["ga", "npo"] = Field(
        "ga", description="the forget term w_ga weighs: gradient ascent (-NLL_f) or NPO's loss (ours)"
    )
    npo_beta: float = Field(
        0.1, gt=0, le=10, description="inverse temperature of NPO's term (forget_term=npo)"
    )
    w_bg: float = Field(1.0, ge=0, le=100, description="weight of the behaviour-guidance KL")
    w_ret: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL (0: no retain stream)")
    temperature: float = Field(1.0, gt=0, le=10, description="teacher temperature")
    top_k: int | None = Field(None, ge=1, le=1_000_000, description="teacher top-k (None = all cached)")
    topk_mode: Literal["tail", "renorm"] = Field("tail", description="missing teacher mass handling")
    bg_norm: Literal["sequence", "token"] = Field("sequence", description="L_BG reduction")
    teacher_cache: bool = Field(True, description="cached teacher top-k (True) or live ref model")
    instruction: str = Field("default", description="guidance template name")
    mask: Literal["none", "vision", "language", "both"] = Field("none", description="saliency mask group")
    mask_path: str | None = Field(None, description="safetensors SaliencyMask file")
    restore_masked_out: bool = Field(True, description="copy masked-out entries back after a masked step")

    def own_optimizer_steps(self) -> bool:
        return self.mask != "none" or self.robust_on()

    def own_steps_reason(self) -> str:
        return "saliency-masked updates" if self.mask != "none" else super().own_steps_reason()

    def plain_steps_hint(self) -> str:
        if self.mask != "none":
            return " or method.params.mask=none" + (
                " (and no robust forget update)" if self.robust_on() else ""
            )
        return super().plain_steps_hint()

    @field_validator("instruction")
    @classmethod
    def _known_template(cls, v: str) -> str:
        if v not in GUIDANCE_TEMPLATES:
            raise ValueError(f"unknown guidance template {v!r}; valid: {sorted(GUIDANCE_TEMPLATES)}")
        return v

    @model_validator(mode="after")
    def _mask_path_needs_mask(self) -> PUBGParams:
        if self.mask == "none" and self.mask_path is not None:
            raise ValueError("mask_path is set but mask='none'; choose mask=vision|language|both")
        return self

    @model_validator(mode="after")
    def _temperature_needs_known_tail(self) -> PUBGParams:
        cut = self.teacher_cache or self.top_k is not None
        if self.temperature != 1.0 and self.topk_mode == "tail" and cut:
            raise ValueError(
                f"temperature={self.temperature} with topk_mode='tail' and a top-k teacher: the tail "
                "bucket's inner distribution is unknown, so it cannot be tempered exactly; use "
                "topk_mode='renorm', or teacher_cache=false with top_k=null, or temperature=1"
            )
        return self


class RMUParams(StrictParams):
    layer: int = Field(1, ge=0, le=1000, description="language-model decoder layer whose output is steered")
    steering_coeff: float = Field(20.0, gt=0, le=1e5, description="c: norm of the random target direction")
    alpha: float = Field(1.0, ge=0, le=1e5, description="weight of the retain activation-matching term")
    trainable: str | None = Field(
        None, description="regex of the parameters that train (None: decoder layers layer-2..layer)"
    )
    direction_seed: int = Field(
        0, ge=0, description="seed of the random direction (the same on every worker)"
    )

    @field_validator("trainable")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"not a regular expression: {err}") from None
        return v


class IdkDPOParams(ForgetRobustness):
    beta: float = Field(0.1, gt=0, le=10, description="inverse temperature of the DPO loss")
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the preference (forget) term")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term")


class UNDIALParams(ForgetRobustness):
    beta: float = Field(
        10.0, gt=0, le=1000, description="how far the target token's teacher logit is lowered"
    )
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the self-distillation (forget) term")
    alpha: float = Field(0.0, ge=0, le=100, description="weight of the retain NLL term (0: the paper's)")


class WGAParams(ForgetRobustness):
    beta: float = Field(1.0, ge=0, le=100, description="exponent of the token weight p^beta")
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the weighted ascent (forget) term")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the retain NLL term")


class SatImpParams(ForgetRobustness):
    beta1: float = Field(5.0, ge=0, le=100, description="saturation exponent: weight p^beta1")
    beta2: float = Field(1.0, ge=0, le=100, description="importance exponent: weight (1-p)^beta2")
    gamma: float = Field(1.0, ge=0, le=100, description="weight of the weighted ascent (forget) term")
    alpha: float = Field(0.1, ge=0, le=100, description="weight of the retain NLL term")


class CEUParams(ForgetRobustness):
    ignore_first_n_answer_tokens: int = Field(
        1, ge=0, le=1000, description="answer tokens at the start of each answer left out of the loss"
    )
    alpha: float = Field(0.0, ge=0, le=100, description="weight of the retain NLL term (0: the paper's)")


def field_names(params_cls: type[BaseModel]) -> list[str]:
    """A method's fields, its own first and then the shared robustness options."""
    shared = set(ForgetRobustness.model_fields) if issubclass(params_cls, ForgetRobustness) else set()
    names = list(params_cls.model_fields)
    return [n for n in names if n not in shared] + [n for n in names if n in shared]


_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def field_range(params_cls: type[BaseModel], name: str) -> str:
    """Human-readable constraints of one Params field, e.g. ``> 0, <= 10`` (empty if none)."""
    info = params_cls.model_fields.get(name)
    if info is None:
        return ""
    parts = []
    for meta in info.metadata:
        for attr, sym in _BOUND_TEXT.items():
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym} {value}")
    return ", ".join(parts)


def validate_params(method: str, params_cls: type[BaseModel], params: Mapping[str, Any]) -> BaseModel:
    """``params`` validated against ``params_cls``; a ``ConfigError`` naming each bad field and its range."""
    try:
        return params_cls.model_validate(dict(params))
    except ValidationError as err:
        msgs = []
        for e in err.errors():
            fname = str(e["loc"][0]) if e["loc"] else ""
            loc = ".".join(["method.params", *(str(x) for x in e["loc"])])
            msg = f"{loc}: {e['msg']}"
            if e["type"] == "extra_forbidden":
                msg += f" (valid fields of {method!r}: {', '.join(field_names(params_cls)) or 'none'})"
            elif rng := field_range(params_cls, fname):
                msg += f" (valid: {rng})"
            msgs.append(msg)
        raise ConfigError(f"invalid params for method {method!r}: " + "; ".join(msgs)) from None
