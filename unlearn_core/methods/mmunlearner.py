"""MMUnlearner (arXiv 2502.11051): masked gradient ascent on the forget set + descent on retain.

Training step ``step`` (0-based):
- if ``step % forget_every == 0``: a masked gradient-ascent step on the forget batch, loss -NLL_f,
  grad norm clipped to ``forget_max_grad_norm`` (1 in the paper). Only the masked-in entries of the
  masked parameters move: see ``saliency.MaskedUpdate`` (separate AdamW fed masked gradients only,
  no weight decay, masked-out entries restored; parameters outside the mask group get nothing);
- every step: a plain descent step on the retain batch, loss NLL_r, with the trainer's optimizer,
  clipped to the trainer's ``max_grad_norm``.

``forget_every`` is the paper's k = retain batches / forget batches; the caller derives it from the
split sizes. The mask comes from ``mask_path`` (a ``SaliencyMask`` file, computed with threshold
``gamma`` for the chosen group) or from ``set_mask()``. ``gamma`` here records the threshold the
mask is (to be) computed with; the pipeline reads it when it builds the mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch.optim import Optimizer

from unlearn_core.methods.base import StrictParams, UnlearnMethod, clip_and_step, nll, zero_grad
from unlearn_core.methods.saliency import MaskedUpdate, SaliencyMask


class MMUnlearnerParams(StrictParams):
    mask: Literal["vision", "language", "both"] = Field("both", description="module group to unlearn")
    mask_path: str | None = Field(None, description="safetensors SaliencyMask file")
    gamma: float = Field(1.0, gt=0, le=1e6, description="Fisher-ratio threshold of the mask")
    forget_every: int = Field(1, ge=1, le=100_000, description="k: a forget step every k-th step")
    forget_max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="clip of the ascent step")
    forget_lr: float | None = Field(None, gt=0, le=1.0, description="None = the trainer optimizer's lr")
    restore_masked_out: bool = Field(True, description="copy masked-out entries back after the ascent step")


class MMUnlearner(UnlearnMethod):
    name = "mmunlearner"
    Params = MMUnlearnerParams
    params: MMUnlearnerParams
    needs_retain = True
    custom_step = True

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.update = MaskedUpdate(p.mask, p.mask_path, restore=p.restore_masked_out, lr=p.forget_lr)

    def set_mask(self, mask: SaliencyMask | Mapping[str, Tensor]) -> None:
        self.update.set_mask(mask)

    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        """-NLL_f + NLL_r, for logging only: the actual update is the two-step ``train_step``."""
        nll_f = nll(model, forget)
        nll_r = nll(model, self._require_retain(retain))
        stats = {"forget_nll": float(nll_f.detach()), "retain_nll": float(nll_r.detach())}
        return -nll_f + nll_r, stats

    def forget_step(
        self, model: nn.Module, optimizer: Optimizer | None, forget: Mapping[str, Any]
    ) -> dict[str, float]:
        """One masked gradient-ascent step on a forget batch (the trainer's optimizer is not stepped;
        it only supplies lr / betas)."""
        zero_grad(model)
        nll_f = nll(model, forget)
        norm = self.update.step(
            model, -nll_f, max_grad_norm=self.params.forget_max_grad_norm, main_optimizer=optimizer
        )
        return {"forget_nll": float(nll_f.detach()), "forget_grad_norm": norm}

    def retain_step(
        self, model: nn.Module, optimizer: Optimizer, retain: Mapping[str, Any], *, max_grad_norm: float
    ) -> dict[str, float]:
        """One plain descent step on a retain batch with the trainer's optimizer."""
        optimizer.zero_grad(set_to_none=True)
        zero_grad(model)
        nll_r = nll(model, retain)
        nll_r.backward()
        norm = clip_and_step(model, optimizer, max_grad_norm)
        optimizer.zero_grad(set_to_none=True)
        return {"retain_nll": float(nll_r.detach()), "retain_grad_norm": norm}

    def train_step(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
        step: int,
        *,
        max_grad_norm: float,
    ) -> dict[str, float]:
        stats: dict[str, float] = {"forget_step": 0.0}
        if step % self.params.forget_every == 0:
            stats.update(self.forget_step(model, optimizer, forget))
            stats["forget_step"] = 1.0
        stats.update(
            self.retain_step(model, optimizer, self._require_retain(retain), max_grad_norm=max_grad_norm)
        )
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"masked_optimizer": self.update.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.update.load_state_dict(state.get("masked_optimizer", {}))
