"""Shared loss pieces for the unlearning objectives.

Conventions (the batch contract of the collate function):
- ``labels`` are aligned with ``input_ids`` (HF convention) and hold -100 on every non-answer token
  (prompt, image and padding tokens). The logits at position ``t-1`` predict ``labels[t]``, so every
  function here shifts by one and then keeps only the *answer positions* (``labels[:, 1:] != -100``).
- Logits are selected at the answer positions *before* being upcast to float32, so the float copy is
  ``[N_answer_tokens, V]`` instead of ``[B, T, V]``.
- Selected positions come out in row-major order (sequence by sequence, left to right); ``rows``
  holds the sequence index of every selected position.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
# A large finite negative number used instead of -inf where a gradient may flow through logsumexp
# (an all -inf logsumexp has a NaN gradient).
_NEG_LARGE = -1e30


def answer_mask(labels: Tensor) -> Tensor:
    """[B, T-1] bool: True where the shifted label is an answer token."""
    return labels[:, 1:] != IGNORE_INDEX


def select_answer_positions(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shift, keep the answer positions only, upcast.

    Returns ``(sel_logits [N, V] float32, targets [N] long, rows [N] long)``.
    """
    if logits.shape[:2] != labels.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} are not aligned")
    mask = answer_mask(labels)
    sel = logits[:, :-1][mask].float()
    targets = labels[:, 1:][mask]
    rows = mask.nonzero(as_tuple=True)[0]
    return sel, targets, rows


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob of every answer token: ``(logp [N], rows [N])``."""
    sel, targets, rows = select_answer_positions(logits, labels)
    logp = torch.log_softmax(sel, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp, rows


def answer_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy over all answer tokens of the batch (0 if there are none)."""
    sel, targets, _ = select_answer_positions(logits, labels)
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(sel, targets, reduction="mean")


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """[B] sum of answer-token log-probs per sequence (log p(y|x))."""
    logp, rows = token_logprobs(logits, labels)
    out = torch.zeros(labels.shape[0], dtype=logp.dtype, device=logp.device)
    return out.index_add(0, rows, logp)


def per_sequence(values: Tensor, rows: Tensor, batch_size: int, norm: str = "sequence") -> Tensor:
    """Reduce per-token ``values`` to a scalar.

    ``norm="sequence"``: sum over the tokens of each sequence, mean over sequences (sequences without
    answer tokens count as 0). ``norm="token"``: mean over all tokens of the batch.
    """
    if values.numel() == 0:
        return values.sum() * 0.0
    if norm == "token":
        return values.mean()
    if norm != "sequence":
        raise ValueError(f"unknown normalisation {norm!r}; valid: sequence, token")
    sums = torch.zeros(batch_size, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    return sums.mean()


def _plogp_minus(p: Tensor, logp: Tensor, logq: Tensor) -> Tensor:
    """sum_i p_i (log p_i - log q_i) with 0 log 0 = 0, without NaN gradients."""
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))
    return (p * (safe_logp - logq)).sum(-1)


def kl_full(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-position forward KL(p_teacher || p_student) over the full vocabulary: [N].

    ``teacher_logits`` / ``student_logits`` are [N, V] at already aligned positions. The teacher's
    logits are divided by ``temperature``; the student is not tempered.
    """
    t_logp = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    return _plogp_minus(t_logp.exp(), t_logp, s_logp)


def kl_topk(
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    student_logits: Tensor,
    temperature: float = 1.0,
    mode: str = "tail",
) -> Tensor:
    """Per-position forward KL(p_teacher || p_student) with a teacher known only on its top-k: [N].

    ``topk_ids`` / ``topk_logprobs`` [N, k] are the teacher's top-k token ids and their (full-vocab,
    untempered) log-probs; ``student_logits`` [N, V].

    ``mode="renorm"``: the teacher is restricted to its top-k and renormalised,
    ``p_i = softmax(logp_i / T)`` over the k ids, and KL = sum_i p_i (log p_i - log q_i) with the
    student's full-vocab log-probs ``q_i``.

    ``mode="tail"``: the missing mass is one explicit bucket. The teacher has k + 1 buckets
    (the top-k and ``1 - sum_i exp(logp_i)``), tempered as ``softmax(log bucket / T)``; the student
    is coarse-grained to the same k + 1 buckets (its top-k probs and the mass of every other token).
    This is the exact KL between the coarse-grained distributions (a lower bound on the full KL);
    with k = V and T = 1 both modes equal the full-vocabulary KL.
    """
    lp = topk_logprobs.float()
    s_logp = torch.log_softmax(student_logits.float(), dim=-1)
    s_topk = s_logp.gather(-1, topk_ids)
    if mode == "renorm":
        t_logp = torch.log_softmax(lp / temperature, dim=-1)
        return _plogp_minus(t_logp.exp(), t_logp, s_topk)
    if mode != "tail":
        raise ValueError(f"unknown top-k mode {mode!r}; valid: renorm, tail")
    hidden = torch.zeros_like(s_logp, dtype=torch.bool).scatter(-1, topk_ids, True)
    tail_mass = (1.0 - lp.exp().sum(-1)).clamp_min(0.0)
    # no token outside the top-k (k = V): the tail is empty, whatever rounding left in 1 - sum
    tail_mass = torch.where(hidden.all(-1), torch.zeros_like(tail_mass), tail_mass)
    t_buckets = torch.cat([lp, torch.log(tail_mass).unsqueeze(-1)], dim=-1)
    t_logp = torch.log_softmax(t_buckets / temperature, dim=-1)
    s_tail = torch.logsumexp(s_logp.masked_fill(hidden, _NEG_LARGE), dim=-1, keepdim=True)
    s_buckets = torch.cat([s_topk, s_tail], dim=-1)
    return _plogp_minus(t_logp.exp(), t_logp, s_buckets)


def npo_loss(logp_theta: Tensor, logp_ref: Tensor, beta: float) -> Tensor:
    """NPO: -(2/beta) * mean_b log sigmoid(-beta * (log p_theta(y_b|x_b) - log p_ref(y_b|x_b)))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp_theta - logp_ref.detach())).mean()


def weighted_answer_nll(logits: Tensor, labels: Tensor, weight: Callable[[Tensor], Tensor]) -> Tensor:
    """mean over the answer tokens of ``weight(p_t) * (-log p_t)``, with ``p_t`` the model's probability
    of the answer token; the weights are computed from the detached probabilities (no gradient flows
    through them), as in WGA and SatImp. 0 if there are no answer tokens."""
    logp, _ = token_logprobs(logits, labels)
    if logp.numel() == 0:
        return logits.sum() * 0.0
    return (weight(logp.detach().exp()) * -logp).mean()


def soft_target_ce(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Per-position cross-entropy ``-sum_v q_v log softmax(logits)_v`` against a target distribution
    ``q`` ([N, V] each; terms with q_v = 0 contribute 0 even where the logit is -inf): [N]."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    return -(target_probs * torch.where(target_probs > 0, logq, torch.zeros_like(logq))).sum(-1)
