"""The method registry: one line per method (name -> its class and its Params), importable without torch.

``unlearn_core.methods.METHODS`` loads the classes from here, so a new method is its own module, its
Params model in ``method_params`` and one line below. The command line checks a method name and its
params against these before anything heavy is imported (a bad ``--method`` or ``method.params``
value is refused in about a second).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from unlearn_core import method_params as P
from unlearn_core.config import ConfigError, RunConfig

# name: ("module:Class" of the method, its Params model)
REGISTRY: dict[str, tuple[str, type[BaseModel]]] = {
    "ga": ("unlearn_core.methods.ga:GradientAscent", P.GAParams),
    "grad_diff": ("unlearn_core.methods.grad_diff:GradDiff", P.GradDiffParams),
    "kl": ("unlearn_core.methods.kl:KLMin", P.KLParams),
    "npo": ("unlearn_core.methods.npo:NPO", P.NPOParams),
    "simnpo": ("unlearn_core.methods.simnpo:SimNPO", P.SimNPOParams),
    "reject": ("unlearn_core.methods.reject:Reject", P.RejectParams),
    "random": ("unlearn_core.methods.random_label:RandomLabel", P.RandomLabelParams),
    "mmunlearner": ("unlearn_core.methods.mmunlearner:MMUnlearner", P.MMUnlearnerParams),
    "pubg": ("unlearn_core.methods.pubg:PUBG", P.PUBGParams),
    "rmu": ("unlearn_core.methods.rmu:RMU", P.RMUParams),
    "idk_dpo": ("unlearn_core.methods.idk_dpo:IdkDPO", P.IdkDPOParams),
    "undial": ("unlearn_core.methods.undial:UNDIAL", P.UNDIALParams),
    "wga": ("unlearn_core.methods.wga:WGA", P.WGAParams),
    "satimp": ("unlearn_core.methods.satimp:SatImp", P.SatImpParams),
    "ceu": ("unlearn_core.methods.ceu:CEU", P.CEUParams),
}
METHOD_CLASSES: dict[str, str] = {name: path for name, (path, _) in REGISTRY.items()}


def method_key(name: str, field: str = "method.name") -> str:
    """The registry key of ``name`` (case and spaces ignored); ``ConfigError`` naming ``field`` if unknown."""
    key = name.strip().lower()
    if key not in METHOD_CLASSES:
        raise ConfigError(f"{field}: unknown method {name!r}; valid: {', '.join(sorted(METHOD_CLASSES))}")
    return key


def params_class(name: str) -> type[BaseModel]:
    """The Params model of method ``name`` (no torch import)."""
    return REGISTRY[method_key(name)][1]


def check_params(name: str, params: dict[str, Any] | None) -> BaseModel:
    """``params`` validated for method ``name`` without loading the method: a ``ConfigError`` naming
    each bad field and its valid range."""
    return P.validate_params(method_key(name), params_class(name), params or {})


def train_defaults(name: str) -> dict[str, Any]:
    """The trainer settings method ``name``'s defaults were measured with (``Params.train_defaults``)."""
    return dict(getattr(params_class(name), "train_defaults", {}))


def check_supported(cfg: RunConfig, mode: str = "unlearn") -> None:
    """Refuse what the training worker cannot run, before any work (preflight, no torch): a method that
    takes its own optimizer steps (saliency-masked or robust forget updates) under DeepSpeed or with
    gradient accumulation."""
    if mode == "finetune":
        return
    name = method_key(cfg.method.name)
    params = check_params(name, dict(cfg.method.params))
    if not params.own_optimizer_steps():  # type: ignore[attr-defined]
        return
    hint = params.plain_steps_hint()  # type: ignore[attr-defined]
    reason = params.own_steps_reason()  # type: ignore[attr-defined]
    stage, accum = cfg.train.deepspeed_stage, cfg.train.grad_accum
    if stage:
        raise ConfigError(
            f"train.deepspeed_stage={stage}: method.name={name!r} does its own optimizer steps ({reason}), "
            f"which the DeepSpeed engine cannot run; use train.deepspeed_stage=0 (DDP){hint}"
        )
    if accum > 1:
        raise ConfigError(
            f"train.grad_accum={accum}: method.name={name!r} takes its own optimizer steps ({reason}) "
            "and cannot accumulate gradients over micro-batches; use "
            f"train.grad_accum=1 and a {accum}x larger train.batch_size{hint}"
        )
