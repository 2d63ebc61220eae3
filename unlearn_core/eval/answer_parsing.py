"""Answer post-processing as the benchmarks' own evaluation scripts do it, on the text of the NEW tokens.

``generate()`` decodes only the tokens the model added. The references decode differently, so each
function states what it does on new-token text and why that is the reference's result. Each reproduces
one reference behaviour and is named after it, so two parses of the same text never share a name:

- ``mllmu_response``: MLLMU-Bench ``eval.py`` decodes prompt + generation
  (``processor.decode(outputs[0][2:], ...)``) and keeps ``split("ASSISTANT:")[1].strip()``. For LLaVA
  the prompt ends with the only ``ASSISTANT:`` of the text, so that is the generation up to the first
  ``ASSISTANT:`` the model itself emits: ``generated.split("ASSISTANT:")[0].strip()`` here. Its
  ``elif "Answer:" in ...`` fallback (cloze, generation) never fires for LLaVA or Idefics2, whose
  decoded prompt always holds ``ASSISTANT:``, so it is not applied (it would only matter for the
  reference's Llama-3.2 ``### Answer:`` generation prompt, which this project does not use).
- ``letter_mllmu``: MLLMU-Bench ``evaluate_classification``: the first character of that response,
  upper-cased, counts only if it is an option key (``assistant_response[0].upper() ... in options``).
- ``letter_mmunlearner``: MMUnlearner (xzz81/MMUnlearner, a fork of Z1zs/MMUnlearner)
  ``MLLMU_eval.py`` ``evaluate_classification`` and ``CLEAR_eval.py`` ``eval_classification`` /
  ``eval_classification_real`` decode only the new tokens (``out_wo_prompt``), remove every
  character outside ``[a-zA-Z0-9]`` with no ``ASSISTANT:`` cut, and read the first character,
  upper-cased. Only the MLLMU image-textual branch checks it against the option keys; its pure-text
  branch and ``CLEAR_eval.py`` compare it with the correct letter directly. The check decides only
  whether a non-key letter is stored or None, never correctness, so a non-key letter is None here.
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


def mllmu_response(generated: str) -> str:
    """The assistant's part of new-token text, as MLLMU-Bench ``eval.py`` cuts prompt + generation: the
    text before the first ``ASSISTANT:`` the model emits (a continued dialogue is not its answer)."""
    return generated.split("ASSISTANT:", 1)[0].strip()


def letter_mllmu(generated: str, n_options: int = 4) -> str | None:
    """MLLMU-Bench's parse: first character of the response, upper-cased, if it is an option key."""
    head = mllmu_response(generated)[:1].upper()
    return head if head and head in option_keys(n_options) else None


def letter_mmunlearner(generated: str, n_options: int = 4) -> str | None:
    """MMUnlearner's parse of the new tokens: drop every non-alphanumeric character (no ``ASSISTANT:``
    cut), then the first one, upper-cased; None unless it is an option key (correctness is the same)."""
    head = _NON_ALNUM.sub("", generated)[:1].upper()
    return head if head and head in option_keys(n_options) else None


def correct_letter(answer: str, options: Sequence[str]) -> str | None:
    """The key of the option whose text is ``answer`` (records store the option text, not the letter)."""
    options = list(options)
    if answer in options:
        return option_keys(len(options))[options.index(answer)]
    return None


def cloze_correct(ground_truth: str, generated: str) -> bool:
    """MLLMU-Bench cloze: the ground truth, lower-cased, is a substring of the lower-cased response."""
    return ground_truth.lower() in mllmu_response(generated).lower()
