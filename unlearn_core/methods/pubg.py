"""PUBG, Post-Unlearning Behavior Guidance (arXiv 2506.02541); no public code, this is our reading.

L = w_ga * (-NLL_f on the plain forget view) + w_bg * L_BG  [+ w_ret * NLL_r]

``forget_term="npo"`` (ours) puts NPO's forget term in place of the ascent:
L = w_ga * NPO_f + w_bg * L_BG [+ w_ret * NLL_r], NPO_f = -(2/npo_beta) * mean_b log sigmoid(-npo_beta *
(log p_theta(y_b|x_b) - log p_ref(y_b|x_b))) on the plain forget view, ``ref`` the frozen starting model
(the method then needs it). NPO's term is bounded: its gradient fades once the private answers are
well below the starting model's likelihood, where the plain ascent keeps pushing.

L_BG = mean over sequences b of sum over the answer tokens t of the guidance answer o of
       KL( p_teacher(. | I, q_guide, o_<t) || p_student(. | I, q, o_<t) ).

Normalisation: ``bg_norm="sequence"`` (default, the paper's per-answer sum) sums the token KLs of each
answer and averages over the sequences of the batch, so L_BG grows with the answer length and w_bg
absorbs that scale; ``bg_norm="token"`` averages over all answer tokens of the batch instead.

The student runs on the ``guide_`` view (plain question q + teacher answer o). The teacher is either
- cached (``teacher_cache=True``): ``teacher_topk_ids`` / ``teacher_topk_logprobs`` [B, T_guide, k]
  aligned with the guide_ positions (the entry at t is the teacher's distribution for
  ``guide_labels[t]``, produced once by batch inference). The teacher log-probs are full-vocabulary
  log-probs of its top-k; the missing mass is handled by ``topk_mode`` (``tail``: one explicit
  bucket for everything outside the top-k, student coarse-grained the same way, exact KL of the
  coarse-grained distributions; ``renorm``: teacher renormalised over its top-k). ``top_k`` (None =
  all cached entries) keeps only the largest ``top_k`` of them;
- live (``teacher_cache=False``): the frozen reference model (``ref``) on the ``teacher_`` view
  (guidance-instruction prompt + the same answer o) under no_grad. The two sequences have different
  prompts but the same answer tokens, so positions are aligned by answer-token order (the i-th
  answer token of one with the i-th of the other; if truncation left one shorter, the common prefix;
  differing answer tokens are an error). With ``top_k`` set the live teacher is cut to its top-k
  exactly like the cache, so both paths compute the same quantity.
``temperature`` T divides the teacher's log-probs (live: its logits) before the softmax; the student
is not tempered. T != 1 is refused with ``topk_mode="tail"`` whenever the teacher is cut to a top-k
(the cache, or ``top_k`` set): the tail bucket's inner distribution is unknown, so tempering it as
one value is not the tempered teacher (at T=0.5 the tail-mode KL was 1.72 against the exact 3.77).
Use ``topk_mode="renorm"`` (the tempered top-k teacher) or a live, uncut teacher for T != 1.

Rows whose cached teacher answer leaks the person (the teacher ignored the instruction) carry
``guide_keep = False``: they stay in the forget stream for the ascent term and are left out of
L_BG only (its mean runs over the kept rows).

With ``mask`` != none (ours, beyond the paper) the update of the forget-side loss
``w_ga * (-NLL_f) + w_bg * L_BG`` is restricted to an MMUnlearner saliency mask exactly like
MMUnlearner's ascent step (``saliency.MaskedUpdate``), and ``w_ret * NLL_r`` (if > 0) is a separate
plain descent step with the trainer's optimizer.

``instruction`` names the guidance template (``prompts.GUIDANCE_TEMPLATES``) the data pipeline
uses to build the teacher prompt; the loss itself does not read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from unlearn_core.data.teacher_cache import GUIDE_KEEP, TOPK_IDS, TOPK_LOGPROBS
from unlearn_core.method_params import PUBGParams
from unlearn_core.methods.base import (
    MaskSpec,
    TeacherCacheSpec,
    UnlearnMethod,
    clip_and_step,
    ensure_finite,
    forward_logits,
    nll,
    ref_logits,
    zero_grad,
)
from unlearn_core.methods.losses import (
    answer_mask,
    kl_full,
    kl_topk,
    npo_loss,
    per_sequence,
    sequence_logprob,
)
from unlearn_core.methods.mmunlearner import mmunlearner_mask_spec
from unlearn_core.methods.saliency import MaskedUpdate, SaliencyMask

# The teacher cache holds at least this many top-k entries per position (top_k may ask for more).
TEACHER_CACHE_K = 16


def align_answer_positions(mask_s: Tensor, mask_t: Tensor) -> tuple[Tensor, Tensor]:
    """Keep-masks pairing the i-th answer position of each student row with the i-th of the teacher
    row (common prefix when the counts differ). Both select the same number of positions per row,
    so row-major selection with them is aligned."""
    n = torch.minimum(mask_s.sum(1), mask_t.sum(1)).unsqueeze(1)
    keep_s = mask_s & ((mask_s.long().cumsum(1) - 1) < n)
    keep_t = mask_t & ((mask_t.long().cumsum(1) - 1) < n)
    return keep_s, keep_t


class PUBG(UnlearnMethod):
    name = "pubg"
    Params = PUBGParams
    params: PUBGParams
    retain_weight = "w_ret"

    def configure(self) -> None:
        p = self.params
        use_bg = p.w_bg > 0
        self.needs_ref = (use_bg and not p.teacher_cache) or (p.w_ga > 0 and p.forget_term == "npo")
        views = ([""] if p.w_ga > 0 else []) + (["guide_"] if use_bg else [])
        if use_bg and not p.teacher_cache:
            views.append("teacher_")
        self.views = tuple(views)
        self.custom_step = p.own_optimizer_steps()
        self.update = (
            MaskedUpdate(p.mask, p.mask_path, restore=p.restore_masked_out) if p.mask != "none" else None
        )

    def set_mask(self, mask: SaliencyMask | Mapping[str, Tensor]) -> None:
        if self.update is None:
            raise ValueError("pubg with mask='none' takes no saliency mask")
        self.update.set_mask(mask)

    def teacher_cache(self) -> TeacherCacheSpec | None:
        """The guide_ (and teacher_) views and the cached top-k come from the teacher cache."""
        p = self.params
        if p.w_bg <= 0:
            return None
        return TeacherCacheSpec(instruction=p.instruction, k=max(TEACHER_CACHE_K, p.top_k or 0))

    def resolved_params(self) -> dict[str, Any]:
        """``top_k`` unset with the teacher cache reads every cached entry: the cache's k is the value."""
        out = super().resolved_params()
        spec = self.teacher_cache()
        if out["top_k"] is None and spec is not None and self.params.teacher_cache:
            out["top_k"] = spec.k
        return out

    def mask_spec(self) -> MaskSpec | None:
        return None if self.params.mask == "none" else mmunlearner_mask_spec(self.params.mask, 1.0)

    # -- L_BG ----------------------------------------------------------------------------------
    def guidance_kl(self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None) -> Tensor:
        """Per-token forward KL(teacher || student) at the guide_ answer positions, reduced per
        ``bg_norm``."""
        p = self.params
        s_logits, s_labels = forward_logits(model, forget, "guide_")
        row_keep = forget.get(GUIDE_KEEP)
        if row_keep is None:
            row_keep = torch.ones(s_labels.shape[0], dtype=torch.bool, device=s_labels.device)
        row_keep = row_keep.to(s_labels.device, torch.bool)
        mask_s = answer_mask(s_labels) & row_keep.unsqueeze(1)
        if p.teacher_cache:
            ids, lps = forget[TOPK_IDS], forget[TOPK_LOGPROBS]
            if ids.shape[:2] != s_labels.shape or lps.shape != ids.shape:
                raise ValueError(
                    f"cached teacher top-k {tuple(ids.shape)}/{tuple(lps.shape)} not aligned with "
                    f"guide_labels {tuple(s_labels.shape)}"
                )
            keep = mask_s
            ids = ids[:, 1:][keep].long()
            lps = lps[:, 1:][keep].float()
            if p.top_k is not None:
                if p.top_k > lps.shape[-1]:
                    raise ValueError(f"top_k={p.top_k} but the cache holds only {lps.shape[-1]} entries")
                lps, idx = lps.topk(p.top_k, dim=-1)
                ids = ids.gather(-1, idx)
            kl = kl_topk(ids, lps, s_logits[:, :-1][keep], p.temperature, p.topk_mode)
        else:
            t_logits, t_labels = ref_logits(ref, forget, "teacher_")
            keep, keep_t = align_answer_positions(mask_s, answer_mask(t_labels))
            if not torch.equal(s_labels[:, 1:][keep], t_labels[:, 1:][keep_t]):
                raise ValueError("teacher_ and guide_ views have different answer tokens; they must share o")
            t_sel = t_logits[:, :-1][keep_t].float()
            s_sel = s_logits[:, :-1][keep]
            if p.top_k is None:
                kl = kl_full(t_sel, s_sel, p.temperature)
            else:
                k = min(p.top_k, t_sel.shape[-1])
                lps, ids = torch.log_softmax(t_sel, dim=-1).topk(k, dim=-1)
                kl = kl_topk(ids, lps, s_sel, p.temperature, p.topk_mode)
        rows = keep.nonzero(as_tuple=True)[0]
        kept = int(row_keep.sum())
        if kept == 0:
            return s_logits.sum() * 0.0
        if p.bg_norm == "sequence":  # mean over the kept rows only
            return per_sequence(kl, rows, s_labels.shape[0], "sequence") * (s_labels.shape[0] / kept)
        return per_sequence(kl, rows, s_labels.shape[0], p.bg_norm)

    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        """w_ga * (-NLL_f) (or w_ga * NPO_f) + w_bg * L_BG."""
        p = self.params
        stats: dict[str, float] = {}
        loss: Tensor | None = None
        if p.w_ga > 0:
            if p.forget_term == "npo":
                logits, labels = forward_logits(model, forget)
                lp = sequence_logprob(logits, labels)
                lp_ref = sequence_logprob(ref_logits(ref, forget)[0], labels)
                npo = npo_loss(lp, lp_ref, p.npo_beta)
                stats["npo"] = float(npo.detach())
                stats["forget_logratio"] = float((lp - lp_ref).mean().detach())
                loss = p.w_ga * npo
            else:
                nll_f = nll(model, forget)
                stats["forget_nll"] = float(nll_f.detach())
                loss = -p.w_ga * nll_f
        if p.w_bg > 0:
            bg = self.guidance_kl(model, forget, ref)
            stats["bg_kl"] = float(bg.detach())
            loss = p.w_bg * bg if loss is None else loss + p.w_bg * bg
        if loss is None:
            raise ValueError("pubg with w_ga = w_bg = 0 has no forget objective")
        return loss, stats

    # -- masked variant: own optimizer steps ---------------------------------------------------
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
        if self.update is None:
            return super().train_step(
                model, optimizer, forget, retain, ref, step, max_grad_norm=max_grad_norm
            )
        zero_grad(model)
        if self.robust_active:  # the robust forget gradient, then the masked step from it
            loss_value, stats = self.robust_forget_backward(model, forget, ref, step, retain)
        else:
            loss, stats = self.forget_loss(model, forget, ref)
            ensure_finite("forget loss", loss, stats)
            loss.backward()
            loss_value = float(loss.detach())
        stats["loss"] = loss_value
        stats["grad_norm"] = self.update.step_from_grads(
            model, max_grad_norm=max_grad_norm, main_optimizer=optimizer, stats=stats
        )
        if self.params.w_ret > 0:
            optimizer.zero_grad(set_to_none=True)
            nll_r = nll(model, self._require_retain(retain))
            ensure_finite("retain loss", nll_r, {**stats, "retain_nll": float(nll_r.detach())})
            (self.params.w_ret * nll_r).backward()
            stats["retain_nll"] = float(nll_r.detach())
            stats["retain_grad_norm"] = clip_and_step(model, optimizer, max_grad_norm, stats)
            optimizer.zero_grad(set_to_none=True)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"masked_optimizer": self.update.state_dict()} if self.update is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.update is not None:
            self.update.load_state_dict(state.get("masked_optimizer", {}))
        else:
            super().load_state_dict(state)
