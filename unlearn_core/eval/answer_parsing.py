"""Answer post-processing exactly as the benchmarks' own evaluation scripts do it.

Each function reproduces one reference behaviour and is named after it, so two parses of the same
text never share a name:

- ``mllmu_response``: MLLMU-Bench ``eval.py`` keeps the text after the first ``"ASSISTANT:"``
  (``generated_text.split("ASSISTANT:")[1].strip()``), else the stripped text. Cloze and
  generation answers also fall back to the text after ``"Answer:"``.
- ``letter_mllmu``: MLLMU-Bench ``evaluate_classification``: the first character of that response,
  upper-cased, counts only if it is an option key (``assistant_response[0].upper() ... in options``).
- ``letter_mmunlearner``: MMUnlearner ``MLLMU_eval.py`` / ``CLEAR_eval.py``: every character that is
  not a letter or digit is removed first, then the first character, upper-cased, must be an option key.
- ``cloze_correct``: MLLMU-Bench ``evaluate_fill_in_the_blank``:
  ``ground_truth.lower() in assistant_response.lower()`` (no whitespace folding, no stripping).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")


def option_keys(n_options: int) -> str:
    """The option keys of an ``n_options``-way question: "ABCD" for four."""
    if not 0 < n_options <= len(OPTION_LETTERS):
        raise ValueError(
            f"a multiple-choice question needs 1..{len(OPTION_LETTERS)} options, got {n_options}"
        )
    return OPTION_LETTERS[:n_options]


def mllmu_response(generated: str, *, answer_marker: bool = False) -> str:
    """The assistant's part of a generation, as MLLMU-Bench ``eval.py`` cuts it.

    ``answer_marker`` adds the cloze/generation fallback: the text after ``"Answer:"`` when there is
    no ``"ASSISTANT:"``.
    """
    if "ASSISTANT:" in generated:
        return generated.split("ASSISTANT:")[1].strip()
    if answer_marker and "Answer:" in generated:
        return generated.split("Answer:")[1].strip()
    return generated.strip()


def letter_mllmu(generated: str, n_options: int = 4) -> str | None:
    """MLLMU-Bench's parse: first character of the response, upper-cased, if it is an option key."""
    response = mllmu_response(generated)
    head = response[:1].upper()
    return head if head and head in option_keys(n_options) else None


def letter_mmunlearner(generated: str, n_options: int = 4) -> str | None:
    """MMUnlearner's parse: drop every non-alphanumeric character, then the first one, upper-cased."""
    cleaned = _NON_ALNUM.sub("", mllmu_response(generated))
    head = cleaned[:1].upper()
    return head if head and head in option_keys(n_options) else None


def correct_letter(answer: str, options: Sequence[str]) -> str | None:
    """The key of the option whose text is ``answer`` (records store the option text, not the letter)."""
    options = list(options)
    if answer in options:
        return option_keys(len(options))[options.index(answer)]
    return None


def cloze_correct(ground_truth: str, generated: str) -> bool:
    """MLLMU-Bench cloze: the ground truth, lower-cased, is a substring of the lower-cased response."""
    return ground_truth.lower() in mllmu_response(generated, answer_marker=True).lower()
