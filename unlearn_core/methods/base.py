"""Base class of the unlearning methods and the batch -> model-kwargs helpers.

A method is a small object built from a validated pydantic ``Params`` model. It declares what the
trainer must provide and computes a loss:

- ``needs_ref``: a frozen copy of the model before unlearning (passed as ``ref``), e.g. NPO, KL, and
  PUBG with a live teacher.
- ``needs_retain``: a retain batch at every step.
- ``views``: the key prefixes of the *forget* batch the data loader must provide (``""`` = the plain
  forget rows, ``idk_``, ``rand_``, ``guide_``, ``teacher_``); ``extra_keys``: other forget-batch keys
  (PUBG's cached teacher top-k). The retain batch is always the plain view.
- ``custom_step``: False -> the trainer may use ``backward()`` (with ``scale=1/accum`` for gradient
  accumulation, or DeepSpeed's ``engine.backward(loss())``) followed by ``optimizer_step()``.
  True -> the method does its own optimizer steps in ``train_step`` (MMUnlearner and masked PUBG: two
  separate updates with a saliency mask); the trainer calls ``train_step`` once per step with the
  whole batch (no gradient accumulation, plain DDP only, not DeepSpeed).

The class attributes above are defaults; a method whose needs depend on its params (PUBG, NPO with a
retain term) sets them on the instance in ``__init__``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from unlearn_core.methods.losses import answer_nll

# Image inputs shared by all views of a row (a view may override one with its own prefixed key).
IMAGE_KEYS: tuple[str, ...] = (
    "pixel_values",
    "image_grid_thw",
    "image_sizes",
    "pixel_attention_mask",
)
# Per-view text inputs besides input_ids / attention_mask / labels, passed when present.
OPTIONAL_TEXT_KEYS: tuple[str, ...] = ("token_type_ids", "mm_token_type_ids", "position_ids")


class StrictParams(BaseModel):
    """Base of every method's Params: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def model_inputs(batch: Mapping[str, Any], prefix: str = "", *, labels: bool = True) -> dict[str, Any]:
    """Model kwargs for one view of a batch.

    Picks ``{prefix}input_ids``, ``{prefix}attention_mask`` (and ``{prefix}labels`` when ``labels``),
    any ``{prefix}`` optional text keys, plus the image keys shared by all views (a prefixed image key
    wins over the shared one). The returned keys carry no prefix.
    """
    key = f"{prefix}input_ids"
    if key not in batch:
        have = sorted(k for k in batch if k.endswith("input_ids"))
        raise KeyError(f"batch has no {key!r} (view {prefix or 'plain'!r}); input views present: {have}")
    out: dict[str, Any] = {"input_ids": batch[key]}
    names = ["attention_mask", *OPTIONAL_TEXT_KEYS] + (["labels"] if labels else [])
    for name in names:
        if f"{prefix}{name}" in batch:
            out[name] = batch[f"{prefix}{name}"]
    if labels and "labels" not in out:
        raise KeyError(f"batch has no {prefix}labels")
    for name in IMAGE_KEYS:
        if f"{prefix}{name}" in batch:
            out[name] = batch[f"{prefix}{name}"]
        elif name in batch and batch[name] is not None:
            out[name] = batch[name]
    return out


def forward_logits(model: nn.Module, batch: Mapping[str, Any], prefix: str = "") -> tuple[Tensor, Tensor]:
    """Run ``model`` on one view; returns ``(logits [B, T, V], labels [B, T])``.

    Labels are not passed to the model (our losses compute on the answer positions themselves).
    """
    kwargs = model_inputs(batch, prefix, labels=False)
    out = model(**kwargs, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits, batch[f"{prefix}labels"]


def ref_logits(ref: nn.Module | None, batch: Mapping[str, Any], prefix: str = "") -> tuple[Tensor, Tensor]:
    """``forward_logits`` on the frozen reference model, without gradients."""
    if ref is None:
        raise ValueError("this method needs the frozen reference model (ref) but got None")
    with torch.no_grad():
        logits, labels = forward_logits(ref, batch, prefix)
    return logits.detach(), labels


def nll(model: nn.Module, batch: Mapping[str, Any], prefix: str = "") -> Tensor:
    """Answer-token NLL of ``model`` on one view."""
    logits, labels = forward_logits(model, batch, prefix)
    return answer_nll(logits, labels)


def move_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (other values unchanged)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed wrappers (their ``.module``) so parameter names are the model's own."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    return model


def zero_grad(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """Clip the gradient norm of all trainable parameters and take one optimizer step."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if params else torch.zeros(())
    optimizer.step()
    return float(norm)


class UnlearnMethod:
    """Base of every unlearning method (see the module docstring)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = StrictParams
    needs_ref: bool = False
    needs_retain: bool = False
    views: tuple[str, ...] = ("",)
    extra_keys: tuple[str, ...] = ()
    custom_step: bool = False
    params: BaseModel

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params = params if params is not None else self.Params()

    # -- the objective -------------------------------------------------------------------------
    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Return ``(loss to minimise, float stats for logging)``."""
        raise NotImplementedError

    def _require_retain(self, retain: Mapping[str, Any] | None) -> Mapping[str, Any]:
        if retain is None:
            raise ValueError(f"method {self.name!r} with these params needs a retain batch, got None")
        return retain

    # -- the update ----------------------------------------------------------------------------
    def backward(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
        *,
        scale: float = 1.0,
    ) -> dict[str, float]:
        """``(loss * scale).backward()`` without zeroing or stepping: one micro-batch of gradient
        accumulation (use ``scale = 1 / accum_steps``). Returns the stats with ``loss`` unscaled."""
        if self.custom_step:
            raise RuntimeError(f"method {self.name!r} does its own optimizer steps: call train_step()")
        loss, stats = self.loss(model, forget, retain, ref)
        (loss * scale).backward()
        stats["loss"] = float(loss.detach())
        return stats

    def optimizer_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, max_grad_norm: float
    ) -> dict[str, float]:
        """Clip, step and zero the gradients after the last ``backward()`` of an accumulation window."""
        norm = clip_and_step(model, optimizer, max_grad_norm)
        optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm}

    def train_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
        step: int,
        *,
        max_grad_norm: float,
    ) -> dict[str, float]:
        """One full update: zero_grad, backward, clip, optimizer.step(). ``step`` is the 0-based
        global step (used by methods with a schedule, e.g. MMUnlearner's every-k-th forget step)."""
        optimizer.zero_grad(set_to_none=True)
        stats = self.backward(model, forget, retain, ref)
        stats.update(self.optimizer_step(model, optimizer, max_grad_norm=max_grad_norm))
        return stats

    # -- extra optimizer state of custom-step methods (checkpointing) ----------------------------
    def state_dict(self) -> dict[str, Any]:
        """State the method keeps outside the model and the trainer's optimizer (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state but got keys {sorted(state)}")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Params fields with defaults and constraints (for docs and summaries)."""
        fields = {}
        for fname, info in cls.Params.model_fields.items():
            constraints = [str(m) for m in info.metadata]
            fields[fname] = {"default": info.default, "constraints": constraints}
        return {"name": cls.name, "params": fields}


def add_retain_nll(
    loss: Tensor, model: nn.Module, retain: Mapping[str, Any] | None, weight: float, stats: dict[str, float]
) -> Tensor:
    """``loss + weight * NLL_r`` (unchanged when the weight is 0); records ``retain_nll`` in stats."""
    if weight == 0.0:
        return loss
    if retain is None:
        raise ValueError("a retain weight > 0 needs a retain batch, got None")
    value = nll(model, retain)
    stats["retain_nll"] = float(value.detach())
    return loss + weight * value
