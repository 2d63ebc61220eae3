"""MLLMU-Bench / CLEAR published metrics on canonical records and model outputs.

Computed with the libraries the benchmarks use, so numbers are comparable with theirs:
ROUGE F-measure from ``rouge_score.rouge_scorer.RougeScorer(..., use_stemmer=True)`` (reference =
target, generation = prediction) and BLEU from ``nltk.translate.bleu_score.sentence_bleu`` with
``SmoothingFunction().method1`` on lower-cased whitespace tokens.

Names are ``bench.<split>.<metric>`` (e.g. ``bench.forget.rougeL``), one set per split:
- ``vqa_acc``: mc_vqa accuracy (argmax of option_scores == correct option; with image);
- ``qa_acc``: mc_text accuracy (text only);
- ``cloze_acc``: task cloze, share of generations containing the ground truth (case-insensitive,
  whitespace runs collapsed);
- ``rouge1``, ``rouge2``, ``rougeL``, ``bleu``: means over task ``generation``;
- ``<task>_rouge1`` ... ``<task>_bleu`` for the other reference tasks in ``text_tasks`` (default
  ``caption``, CLEAR's captioning metric), e.g. ``bench.forget.caption_rougeL``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from unlearn_core.eval.metrics import answer_index, chosen_index, generation_of, parse_records

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
_SMOOTHING = SmoothingFunction().method1
_SPACES = re.compile(r"\s+")


def make_rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_f(
    reference: str, generation: str, scorer: rouge_scorer.RougeScorer | None = None
) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of ``generation`` against ``reference``."""
    scores = (scorer or make_rouge_scorer()).score(reference, generation)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def bleu(reference: str, generation: str) -> float:
    """Sentence BLEU (NLTK, smoothing method1) on lower-cased whitespace tokens; 0 for an empty generation."""
    hyp = generation.lower().split()
    if not hyp:
        return 0.0
    return float(sentence_bleu([reference.lower().split()], hyp, smoothing_function=_SMOOTHING))


def cloze_match(ground_truth: str, generation: str) -> bool:
    """Whether the ground truth is a substring of the generation (case-insensitive, spaces collapsed)."""
    truth = _SPACES.sub(" ", ground_truth).strip().lower()
    return bool(truth) and truth in _SPACES.sub(" ", generation).lower()


def compute_bench_metrics(
    records: Iterable[Mapping[str, Any] | Any],
    outputs: Mapping[str, Mapping[str, Any] | str],
    *,
    text_tasks: Sequence[str] = ("generation", "caption"),
) -> dict[str, float]:
    """``bench.<split>.<metric>`` means (see the module doc); metrics without samples are omitted."""
    scorer = make_rouge_scorer()
    values: dict[str, list[float]] = defaultdict(list)
    for rec in parse_records(records):
        out = outputs.get(rec.sample_id)
        if out is None:
            continue
        prefix = f"bench.{rec.split}."
        if rec.task in ("mc_vqa", "mc_text"):
            truth = answer_index(rec.answer, rec.options)
            if truth is not None:
                name = "vqa_acc" if rec.task == "mc_vqa" else "qa_acc"
                values[prefix + name].append(float(chosen_index(out, rec.options or []) == truth))
            continue
        gen = generation_of(out)
        if gen is None or not rec.answer.strip():
            continue
        if rec.task == "cloze":
            values[prefix + "cloze_acc"].append(float(cloze_match(rec.answer, gen)))
        elif rec.task in text_tasks:
            stem = prefix if rec.task == "generation" else f"{prefix}{rec.task}_"
            for name, value in rouge_f(rec.answer, gen, scorer).items():
                values[stem + name].append(value)
            values[stem + "bleu"].append(bleu(rec.answer, gen))
    return {name: sum(v) / len(v) for name, v in sorted(values.items()) if v}
