"""Greedy batched generation, option scoring and answer log-probs (evaluator, NPO, PUBG's teacher)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig

from unlearn_core.data.encode import (
    IGNORE_INDEX,
    collate,
    encode_answers,
    encode_prompt,
    model_inputs,
    pad_id,
    to_image_array,
    tokenizer_of,
)
from unlearn_core.prompts import GUIDANCE_TEMPLATES, guided_question


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` and no autograd inside; the previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def apply_instruction(question: str, instruction: str | None) -> str:
    """A guidance-template name, a ``{question}`` format string, or a prefix; None: unchanged."""
    if not instruction:
        return question
    if instruction in GUIDANCE_TEMPLATES:
        return guided_question(question, instruction)
    if "{question}" in instruction:
        return instruction.format(question=question)
    return f"{instruction} {question}"


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_model(batch: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The batch on the model's device, its floating tensors in the model's dtype."""
    device, dtype = _device(model), next(model.parameters()).dtype
    out = {}
    for k, v in batch.items():
        v = v.to(device)
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out


def _greedy_config(model: nn.Module, processor: Any, max_new_tokens: int) -> GenerationConfig:
    tok = tokenizer_of(processor)
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id(processor),
        eos_token_id=eos if eos is not None else tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )


def generate(
    model: nn.Module,
    processor: Any,
    prompts: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    instruction: str | None = None,
    image_size: int | None = None,
) -> list[str]:
    """Greedy answers to ``prompts`` (``{"question", "image": uint8 array | None}``), in order.

    Left-padded batches; only the new tokens are decoded, special tokens skipped.
    """
    rows = []
    for p in prompts:
        image = to_image_array(p.get("image"), image_size)
        q = apply_instruction(p["question"], instruction)
        rows.append({**encode_prompt(processor, question=q, image=image), "image": image})
    return generate_encoded(model, processor, rows, max_new_tokens=max_new_tokens, batch_size=batch_size)


def generate_encoded(
    model: nn.Module,
    processor: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to already encoded prompts (``{"input_ids", "image": uint8 array | None}``: a
    multi-turn chat, an answer prefix), in order; only the new tokens are decoded."""
    gen_cfg = _greedy_config(model, processor, max_new_tokens)
    tok = tokenizer_of(processor)
    answers: list[str] = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            batch = list(rows[start : start + batch_size])
            inputs = to_model(model_inputs(collate(batch, processor, padding_side="left")), model)
            out = model.generate(**inputs, generation_config=gen_cfg)
            new = out[:, inputs["input_ids"].shape[1] :]
            answers += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return answers


def answer_logprobs(model: nn.Module, batch: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
    """[B] sum of log p(answer token) over the answer tokens (labels != -100); differentiable."""
    batch = to_model(batch, model)
    logits = model(**model_inputs(batch, prefix)).logits[:, :-1].float()
    labels = batch[f"{prefix}labels"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return -nll.sum(dim=-1)


def answer_token_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] summed negative log-likelihood of the answer tokens (labels != -100) and [B] their count."""
    batch = to_model(batch, model)
    logits = model(**model_inputs(batch)).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(dim=-1), (labels != IGNORE_INDEX).sum(dim=-1)


def answer_mean_nll(
    model: nn.Module,
    processor: Any,
    question: str,
    image: Any,
    answers: Sequence[str],
    *,
    image_size: int | None = None,
) -> list[float]:
    """Per answer: its mean negative log-likelihood per answer token given image + question (one batch).

    The loss CLEAR's ``mm/eval.py`` stores as ``avg_paraphrased_loss`` / ``average_perturb_loss``:
    summed token cross-entropy over the answer divided by its number of answer tokens (the EOS the
    chat template appends counts as one).
    """
    arr = to_image_array(image, image_size)
    encoded = encode_answers(processor, question=question, answers=answers, image=arr)
    rows = [{**e, "image": arr} for e in encoded]
    with eval_mode(model):
        total, count = answer_token_nll(model, collate(rows, processor))
        return (total / count.clamp(min=1)).tolist()


def score_options(
    model: nn.Module,
    processor: Any,
    question: str,
    image: Any,
    options: Sequence[str],
    *,
    image_size: int | None = None,
) -> list[float]:
    """Sum log-prob of each option as the answer (its EOS included)."""
    return score_options_many(model, processor, [(question, image, options)], image_size=image_size)[0]


# Tokens per forward when scoring many rows' options: ~130 short tiny-model sequences, ~5 LLaVA-7B
# ones (576 image tokens); bounds the float32 logits (tokens x vocab) a batch holds.
SCORE_TOKENS_PER_BATCH = 4096


def score_options_many(
    model: nn.Module,
    processor: Any,
    items: Sequence[tuple[str, Any, Sequence[str]]],
    *,
    image_size: int | None = None,
) -> list[list[float]]:
    """``score_options`` for many ``(question, image, options)`` at once: the option sequences of all
    rows go through the model in batches of about ``SCORE_TOKENS_PER_BATCH`` tokens (one forward per
    row was most of an evaluation's multiple-choice time). Right padding: a sequence's scores do not
    depend on what it is batched with."""
    seqs: list[dict[str, Any]] = []
    for question, image, options in items:
        arr = to_image_array(image, image_size)
        encoded = encode_answers(processor, question=question, answers=options, image=arr)
        seqs += [{**e, "image": arr} for e in encoded]
    scores: list[float] = []
    with eval_mode(model):
        start = 0
        while start < len(seqs):
            end, longest = start, 0
            while end < len(seqs):
                longest = max(longest, len(seqs[end]["input_ids"]))
                if end > start and longest * (end - start + 1) > SCORE_TOKENS_PER_BATCH:
                    break
                end += 1
            scores += answer_logprobs(model, collate(seqs[start:end], processor)).tolist()
            start = end
    out, at = [], 0
    for _, _, options in items:
        out.append(scores[at : at + len(options)])
        at += len(options)
    return out


def teacher_topk(
    model: nn.Module,
    processor: Any,
    rows: Sequence[dict[str, Any]],
    k: int,
    *,
    batch_size: int = 16,
    temperature: float = 1.0,
    prefix: str = "",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row: top-k token ids (int64) and log-probs (float32), both [T_ans, k].

    Rows are encoded prompt+answer rows (``input_ids``, ``labels``, ``image``); position t is the
    distribution that predicts the t-th answer token. Log-probs are of softmax(logits / temperature).
    """
    out: list[tuple[np.ndarray, np.ndarray]] = []
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            batch = to_model(
                collate(list(rows[start : start + batch_size]), processor, prefixes=(prefix,)), model
            )
            logits = model(**model_inputs(batch, prefix)).logits[:, :-1].float() / temperature
            answer_pos = batch[f"{prefix}labels"][:, 1:] != IGNORE_INDEX
            for i in range(logits.shape[0]):
                logp = torch.log_softmax(logits[i][answer_pos[i]], dim=-1)
                vals, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
                out.append((ids.cpu().numpy().astype(np.int64), vals.cpu().numpy().astype(np.float32)))
    return out
