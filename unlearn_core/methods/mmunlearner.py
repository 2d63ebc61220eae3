"""MMUnlearner (arXiv 2502.11051): masked gradient ascent on the forget set + descent on retain.

Training step ``step`` (0-based):
- if ``step % forget_every == 0``: a masked gradient-ascent step on the forget batch, loss -NLL_f,
  grad norm clipped to ``forget_max_grad_norm`` (1 in the paper). Only the masked-in entries of the
  masked parameters move: see ``saliency.MaskedUpdate`` (separate AdamW fed masked gradients only,
  no weight decay, masked-out entries restored; parameters outside the mask group get nothing);
- every step: a plain descent step on the retain batch, loss NLL_r, with the trainer's optimizer,
  clipped to the trainer's ``max_grad_norm``.

``forget_every`` is the paper's k = retain batches / forget batches: ``derive`` computes it from the
stream sizes unless the user set it, and the trainer draws a forget batch only on forget steps.
The mask comes from ``mask_path`` (a ``SaliencyMask`` file, computed with threshold ``gamma`` for
the chosen group) or from ``set_mask()``; ``mask_spec`` tells the pipeline how to compute it,
with the paper's preserve sets (``preserve_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from torch import Tensor, nn
from torch.optim import Optimizer

from unlearn_core.config import TrainConfig
from unlearn_core.data.selection import FORGET_TRAIN_TASKS, balanced_by_entity, in_stream
from unlearn_core.method_params import MMUnlearnerParams
from unlearn_core.methods.base import (
    MaskSpec,
    UnlearnMethod,
    clip_and_step,
    ensure_finite,
    nll,
    zero_grad,
)
from unlearn_core.methods.saliency import MaskedUpdate, SaliencyMask

Row = Mapping[str, Any]
PRESERVE_RECIPE = "mmunlearner-v2-balanced"


def forget_rows(rows: Sequence[Row], budget: int) -> list[Row]:
    """The forget Fisher's rows: the visual forget set, spread over the forget entities."""
    return balanced_by_entity([r for r in rows if in_stream("forget", r["split"], r["task"])], budget)


def preserve_rows(rows: Sequence[Row], group: str, budget: int) -> list[Row]:
    """The paper's preserve sets, spread over every entity they cover.

    ``vision``: retain VQA (image questions about retain entities). ``language``: retain VQA plus the
    text-only QA of every entity, forget entities included (their textual knowledge is kept).
    """
    retain_vqa = [r for r in rows if r["split"] == "retain" and r["task"] in FORGET_TRAIN_TASKS]
    if group == "vision":
        return balanced_by_entity(retain_vqa, budget)
    if group == "language":
        text_qa = [r for r in rows if r["task"] == "text_qa" and r["split"] in ("forget", "retain")]
        return balanced_by_entity(retain_vqa + text_qa, budget)
    raise ValueError(f"unknown preserve group {group!r}; valid: vision, language")


def mmunlearner_mask_spec(group: str, gamma: float) -> MaskSpec:
    return MaskSpec(
        group=group, gamma=gamma, forget_rows=forget_rows, preserve_rows=preserve_rows, recipe=PRESERVE_RECIPE
    )


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

    def mask_spec(self) -> MaskSpec:
        return mmunlearner_mask_spec(self.params.mask, self.params.gamma)

    def derive(self, stream_rows: Mapping[str, int], train: TrainConfig) -> dict[str, Any]:
        """Unless set: k = retain batches / forget batches (rounded, at least 1), and the ascent step's
        peak lr = ``train.lr`` (both steps follow the trainer's warm-up + cosine schedule)."""
        out: dict[str, Any] = {}
        if self.params.forget_lr is None:
            out["forget_lr"] = train.lr
        if self.params.forget_every is not None:
            return out
        n_f, n_r = stream_rows.get("forget", 0), stream_rows.get("retain", 0)
        if n_f <= 0:
            raise ValueError("mmunlearner: the forget stream is empty, k (forget_every) cannot be derived")
        k = math.ceil(n_r / train.batch_size) / math.ceil(n_f / train.batch_size)
        return {**out, "forget_every": max(1, round(k))}

    @property
    def k(self) -> int:
        if self.params.forget_every is None:
            raise ValueError(
                "mmunlearner: forget_every (k) is unset; the pipeline derives it from the split sizes "
                "(method.derive) or set method.params.forget_every"
            )
        return self.params.forget_every

    def uses_forget_batch(self, step: int) -> bool:
        return step % self.k == 0

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
        terms = {"forget_nll": float(nll_f.detach())}
        ensure_finite("forget loss", nll_f, terms)
        norm = self.update.step(
            model,
            -nll_f,
            max_grad_norm=self.params.forget_max_grad_norm,
            main_optimizer=optimizer,
            stats=terms,
        )
        return {"forget_nll": float(nll_f.detach()), "forget_grad_norm": norm}

    def retain_step(
        self, model: nn.Module, optimizer: Optimizer, retain: Mapping[str, Any], *, max_grad_norm: float
    ) -> dict[str, float]:
        """One plain descent step on a retain batch with the trainer's optimizer."""
        optimizer.zero_grad(set_to_none=True)
        zero_grad(model)
        nll_r = nll(model, retain)
        terms = {"retain_nll": float(nll_r.detach())}
        ensure_finite("retain loss", nll_r, terms)
        nll_r.backward()
        norm = clip_and_step(model, optimizer, max_grad_norm, terms)
        optimizer.zero_grad(set_to_none=True)
        return {"retain_nll": float(nll_r.detach()), "retain_grad_norm": norm}

    def train_step(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        forget: Mapping[str, Any] | None,
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
        step: int,
        *,
        max_grad_norm: float,
    ) -> dict[str, float]:
        """``forget`` may be None on steps where ``uses_forget_batch(step)`` is False."""
        stats: dict[str, float] = {"forget_step": 0.0}
        if self.uses_forget_batch(step):
            if forget is None:
                raise ValueError(f"mmunlearner step {step} is a forget step but got no forget batch")
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
