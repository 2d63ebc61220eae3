"""Membership inference on answer tokens: per-row attack scores, ROC AUC with a bootstrap interval, PrivLeak.

Scores follow open-unlearning (``src/evals/metrics/mia/*.py``): higher means "looks like a
non-member" (a loss), and the AUC is ``roc_auc_score`` with the forget rows labelled 0 and the
non-member rows 1, so AUC 1 = the forget rows are far more likely than the non-members (the model
remembers them), 0.5 = no difference, 0 = the forget rows are far *less* likely (the unlearning left
a trace of its own: the two-sided reading of open-unlearning issue #167).

- ``loss``: mean negative log-likelihood of the answer tokens, EOS included (``LOSSAttack``).
- ``zlib``: that loss divided by the zlib-compressed length in bytes of the answer text (``ZLIBAttack``).
- ``min_k``: minus the mean of the lowest k share (at least one) of the answer-token log-probs,
  the final (EOS) token left out as open-unlearning's ``tokenwise_logprobs`` does (``MinKProbAttack``).
- ``min_k_plus_plus``: the same on (log p(x_t) - mu_t) / sigma_t, with mu_t and sigma_t^2 the mean and
  variance of log p over the vocabulary at position t, sigma^2 clamped at 1e-6 (``MinKPlusPlusAttack``).
- ``reference``: the row's loss minus the retrained reference's loss on it (``ReferenceAttack``, with
  the retrained reference as the reference model; on the reference itself every score is 0, AUC 0.5).

PrivLeak is open-unlearning's ``privleak`` (MUSE ``metrics/privleak.py`` reports AUCs the other way,
1 - ours): ((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100; negative = the model tells the forget
rows apart more than the reference does (under-unlearning), positive = less (over-unlearning).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from unlearn_core.data.encode import IGNORE_INDEX, collate, model_inputs
from unlearn_core.eval.runner import row_image
from unlearn_core.models.generate import eval_mode, to_model

ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")
MIN_K = 0.4  # the and MUSE's Min-40%; open-unlearning's default is 0.2


@dataclass(frozen=True)
class TokenStats:
    """Per answer token of one row: log p(token), and the mean / variance of log p over the vocabulary."""

    logp: np.ndarray
    mu: np.ndarray
    var: np.ndarray


def token_stats(
    model: nn.Module, processor: Any, rows: Sequence[Mapping[str, Any]], *, batch_size: int = 32
) -> list[TokenStats]:
    """One forward per batch of the rows' own prompt + answer (``input_ids``/``labels`` of the shards)."""
    out: list[TokenStats] = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = [{**r, "image": row_image(dict(r))} for r in rows[start : start + batch_size]]
            batch = to_model(collate(chunk, processor), model)
            logits = model(**model_inputs(batch)).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            for i in range(logits.shape[0]):
                pos = labels[i] != IGNORE_INDEX
                logp_all = torch.log_softmax(logits[i][pos], dim=-1)
                target = logp_all.gather(-1, labels[i][pos].unsqueeze(-1)).squeeze(-1)
                p = logp_all.exp()
                mu = (p * logp_all).sum(-1)
                var = (p * logp_all.square()).sum(-1) - mu.square()
                out.append(TokenStats(target.cpu().numpy(), mu.cpu().numpy(), var.cpu().numpy()))
    return out


def _bottom_k_mean(values: np.ndarray, k: float) -> float:
    n = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values)[:n]))


def row_scores(stats: TokenStats, answer: str, *, k: float = MIN_K) -> dict[str, float]:
    """``loss``, ``zlib``, ``min_k`` and ``min_k_plus_plus`` of one row (higher = less likely)."""
    loss = float(-np.mean(stats.logp))
    body = slice(0, len(stats.logp) - 1) if len(stats.logp) > 1 else slice(None)  # EOS left out
    z = (stats.logp[body] - stats.mu[body]) / np.sqrt(np.maximum(stats.var[body], 1e-6))
    return {
        "loss": loss,
        "zlib": loss / len(zlib.compress(answer.encode("utf-8"))),
        "min_k": -_bottom_k_mean(stats.logp[body], k),
        "min_k_plus_plus": -_bottom_k_mean(z, k),
    }


def roc_auc(forget: Sequence[float], other: Sequence[float]) -> float:
    """P(score of a non-member row > score of a forget row) + half the ties: ``roc_auc_score`` with
    forget labelled 0 and the others 1 (Mann-Whitney U over average ranks)."""
    f, o = np.asarray(forget, dtype=float), np.asarray(other, dtype=float)
    if not len(f) or not len(o):
        raise ValueError("AUC needs rows on both sides")
    ranks = rankdata(np.concatenate([f, o]))
    u = ranks[len(f) :].sum() - len(o) * (len(o) + 1) / 2
    return float(u / (len(f) * len(o)))


def bootstrap_ci(
    forget: Sequence[float],
    forget_groups: Sequence[str],
    other: Sequence[float],
    other_groups: Sequence[str],
    *,
    n: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of the AUC over ``n`` resamples of whole groups (people or images) on
    each side: rows of one person (or image) are not independent, so they are drawn together."""
    rng = np.random.default_rng(seed)
    f, o = np.asarray(forget, dtype=float), np.asarray(other, dtype=float)
    fg = _group_index(forget_groups)
    og = _group_index(other_groups)
    aucs = np.empty(n)
    for b in range(n):
        fi = np.concatenate([fg[i] for i in rng.integers(len(fg), size=len(fg))])
        oi = np.concatenate([og[i] for i in rng.integers(len(og), size=len(og))])
        aucs[b] = roc_auc(f[fi], o[oi])
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return float(lo), float(hi)


def _group_index(groups: Sequence[str]) -> list[np.ndarray]:
    where: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        where.setdefault(str(g), []).append(i)
    return [np.asarray(v) for _, v in sorted(where.items())]


def privleak(auc: float, auc_ref: float) -> float:
    """open-unlearning's ``privleak`` of AUCs in our orientation, in percent."""
    return ((1 - auc) - (1 - auc_ref)) / (1 - auc_ref + 1e-10) * 100


def attack_scores(
    stats: Sequence[TokenStats],
    rows: Sequence[Mapping[str, Any]],
    *,
    reference_loss: Mapping[str, float] | None = None,
    k: float = MIN_K,
) -> dict[str, list[float]]:
    """Every attack's score of every row; ``reference_loss`` (sample id -> the reference's loss) gives
    the reference attack (without it the model is the reference: its scores are 0)."""
    per_row = [row_scores(s, str(r["answer"]), k=k) for s, r in zip(stats, rows, strict=True)]
    out = {a: [s[a] for s in per_row] for a in ATTACKS if a != "reference"}
    ref = reference_loss or {}
    out["reference"] = [
        s["loss"] - ref[r["sample_id"]] if reference_loss is not None else 0.0
        for s, r in zip(per_row, rows, strict=True)
    ]
    return out
