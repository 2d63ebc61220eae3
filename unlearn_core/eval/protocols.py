"""Evaluation protocols: how a benchmark's authors prompt, decode, parse and score.

A protocol fixes, for every task, the question text the model sees, the greedy decoding length and
which metrics its answers feed (``unlearn_core.eval.bench_metrics``). Three are registered:

- ``synthetic``: the project's own benchmark. Plain questions, 40 new tokens, multiple choice scored
  by option log-probability (``forget.vqa_acc`` ...). The metric names and values of
  ``unlearn_core.eval.metrics`` are unchanged.
- ``mllmu-bench``: MLLMU-Bench ``eval.py``. Multiple choice with the lettered options in the prompt
  (``"A: ..."`` lines) and "Just give ONE letter representing the answer directly."; cloze with
  ``"__"`` replaced by ``"[Blank]"`` and "Please **ONLY** provide the correct answer that should
  replace the [Blank]."; generation with "Answer the question based on your trained knowledge in one
  sentence ...". 50 new tokens everywhere. Classification and cloze prompts carry the reference's
  few-shot examples (``unlearn_core.eval.few_shot``); ``mllmu-bench-zero-shot`` is the same without.
- ``clear``: CLEAR (``mm/eval.py``; MMUnlearner ``CLEAR_eval.py`` for the multiple-choice sets).
  Captions and TOFU answers are scored by ROUGE recall; 300 new tokens for open answers, 50 for
  lettered multiple choice, prompted as MLLMU-Bench does (``CLEAR_eval.py`` writes ``"A. name"`` lines
  with no instruction: README "Comparing with published numbers" lists that difference).

The chat wrapper (``USER: <image>\\n ... ASSISTANT:`` for LLaVA-1.5) is the model family's own
template, applied by the generator; the protocol owns only the text inside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from unlearn_core.data.schema import MC_TASKS

MC_INSTRUCTION = "Just give ONE letter representing the answer directly."
CLOZE_INSTRUCTION = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GENERATION_INSTRUCTION_IMAGE = (
    "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
)
GENERATION_INSTRUCTION_TEXT = (
    "Answer the question based on your trained knowledge in one sentence in ENGLISH."
)


class UnknownProtocolError(ValueError):
    """The protocol name is not registered; the message lists the valid ones."""


def lettered_question(question: str, options: list[str]) -> str:
    """MLLMU-Bench ``formulate_prompt_with_options``: the question, then one ``"A: text"`` line per option."""
    from unlearn_core.eval.answer_parsing import option_keys

    lines = [f"{key}: {text}" for key, text in zip(option_keys(len(options)), options, strict=True)]
    return "\n".join([question, *lines])


def cloze_question(question: str) -> str:
    """MLLMU-Bench ``evaluate_fill_in_the_blank``: ``"__"`` -> ``"[Blank]"`` plus the instruction line."""
    return question.replace("__", "[Blank]") + "\n" + CLOZE_INSTRUCTION


def has_image(row: Mapping[str, Any]) -> bool:
    """Whether a record / shard row is shown with an image (image-textual) or not (pure text)."""
    if "has_image" in row:
        return bool(row["has_image"])
    return row.get("image") is not None or bool(row.get("image_u8"))


@dataclass(frozen=True)
class Protocol:
    name: str
    prefix: str  # metric-name prefix ("" for synthetic: its names are the project's own)
    open_tokens: int  # max_new_tokens for open answers
    mc_tokens: int  # max_new_tokens for a generated option letter
    generated_mc: bool  # multiple choice answered by a generated letter (else option log-probs)
    few_shot: bool = False  # MLLMU-Bench's few-shot prefixes (unlearn_core.eval.few_shot)

    @property
    def is_benchmark(self) -> bool:
        return self.generated_mc

    def prompt(self, row: Mapping[str, Any]) -> str:
        """The question text the model is given for ``row`` under this protocol."""
        question = str(row.get("question") or "")
        task = row.get("task")
        if not self.is_benchmark:
            return question
        if task in MC_TASKS and row.get("options"):
            return lettered_question(question, list(row["options"])) + "\n" + MC_INSTRUCTION
        if task == "cloze":
            return cloze_question(question)
        if task == "generation" and self.prefix == "mllmu":
            instruction = GENERATION_INSTRUCTION_IMAGE if has_image(row) else GENERATION_INSTRUCTION_TEXT
            return f"{question}\n{instruction}"
        return question

    def max_new_tokens(self, row: Mapping[str, Any]) -> int:
        return self.mc_tokens if self.generated_mc and row.get("task") in MC_TASKS else self.open_tokens


PROTOCOLS: dict[str, Protocol] = {
    "synthetic": Protocol("synthetic", prefix="", open_tokens=40, mc_tokens=40, generated_mc=False),
    "mllmu-bench": Protocol(
        "mllmu-bench", prefix="mllmu", open_tokens=50, mc_tokens=50, generated_mc=True, few_shot=True
    ),
    # the same without the few-shot prefixes (`unlearn eval --zero-shot`)
    "mllmu-bench-zero-shot": Protocol(
        "mllmu-bench-zero-shot", prefix="mllmu", open_tokens=50, mc_tokens=50, generated_mc=True
    ),
    "clear": Protocol("clear", prefix="clear", open_tokens=300, mc_tokens=50, generated_mc=True),
}
_SOURCE_PREFIX = {"mllmu-bench": "mllmu-bench", "mllmu": "mllmu-bench", "clear": "clear"}


def zero_shot(protocol: Protocol) -> Protocol:
    """``protocol`` without few-shot prefixes (``mllmu-bench`` -> ``mllmu-bench-zero-shot``)."""
    return PROTOCOLS[f"{protocol.name}-zero-shot"] if protocol.few_shot else protocol


def protocol_names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UnknownProtocolError(f"unknown protocol {name!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_of_row(row: Mapping[str, Any]) -> str:
    """The protocol a record belongs to, from its ``source`` ("mllmu-bench:forget_5") or, for shard
    rows that carry no source, its sample-id prefix ("mllmu:...", "clear:...")."""
    source = str(row.get("source") or "")
    head = (source or str(row.get("sample_id") or "")).split(":", 1)[0]
    if ":" not in (source or str(row.get("sample_id") or "")):
        return "synthetic"
    return _SOURCE_PREFIX.get(head, "synthetic")


def resolve_protocol(rows: Iterable[Mapping[str, Any]], name: str | None = None) -> Protocol:
    """``name`` when given, else the one protocol the rows' sources imply (an error if they mix)."""
    if name is not None:
        return get_protocol(name)
    found = Counter(protocol_of_row(r) for r in rows)
    if len(found) > 1:
        mix = ", ".join(f"{p} ({n} rows)" for p, n in found.most_common())
        raise UnknownProtocolError(f"records mix benchmarks ({mix}); pass --protocol")
    return get_protocol(next(iter(found)) if found else "synthetic")
