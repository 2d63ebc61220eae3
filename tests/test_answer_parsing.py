"""Hand-written cases that encode the reference evaluators' answer parsing, one reference each.

Every generation here is the text of the NEW tokens only, as ``generate()`` returns it.

References (read from their public code; the line quoted is the one each case encodes):
- MLLMU  = franciscoliu/MLLMU-Bench ``eval.py`` (read from the mirror YokeYao/MLLMU-Bench@b83832a),
  ``evaluate_classification``: ``generated_text = processor.decode(outputs[0][2:], ...)`` (prompt +
  generation), ``assistant_response = generated_text.split("ASSISTANT:")[1].strip() if "ASSISTANT:"
  in generated_text else generated_text.strip()``, then ``predicted_answer =
  assistant_response[0].upper() if assistant_response and assistant_response[0].upper() in options
  else None``, options being the ``{"A": ..., "D": ...}`` dict, so ``in options`` tests the keys. The
  LLaVA prompt ends with ``ASSISTANT:``, so on new-token text the response is the part before the
  first ``ASSISTANT:`` the model emits (checked by
  ``test_mllmu_response_equals_the_reference_cut_of_prompt_plus_generation``).
- MMU    = MMUnlearner ``MLLMU_eval.py`` ``evaluate_classification`` and ``CLEAR_eval.py``
  ``eval_classification`` / ``eval_classification_real`` (read from xzz81/MMUnlearner@7a826d2, a
  fork of Z1zs/MMUnlearner): ``out_wo_prompt = outputs[:, inputs.input_ids.shape[-1]:]`` (new tokens
  only), decoded, then ``re.sub(r'[^a-zA-Z0-9]', '', generated_text)`` with NO ``ASSISTANT:`` cut and
  the first character upper-cased. Only the MLLMU image-textual branch checks ``in options``; the
  pure-text branch and ``CLEAR_eval.py`` compare the character with the correct letter directly, so
  the check never changes correctness (a non-key letter is stored as None here).
- CLOZE  = MLLMU-Bench ``eval.py`` ``evaluate_fill_in_the_blank``: the same ``ASSISTANT:`` cut (its
  ``elif "Answer:"`` fallback cannot fire on a LLaVA prompt, which always holds ``ASSISTANT:``), then
  ``ground_truth.lower() in assistant_response.lower()``.
- BLEU   = MLLMU-Bench ``eval.py`` ``compute_bleu``: ``sentence_bleu([ground_truth.split()],
  predicted_answer.split(), smoothing_function=SmoothingFunction().method1)`` (no lower-casing).
- ROUGE  = MLLMU-Bench ``eval.py`` ``evaluate_generation``: ``RougeScorer(['rouge1', 'rouge2', 'rougeL'],
  use_stemmer=True).score(ground_truth, predicted_answer)[...].fmeasure``; CLEAR
  ``somvy/multimodal_unlearning mm/eval.py`` ``eval_rouge_recall``: ``rouge_scores["rougeL"].recall``.
"""

from __future__ import annotations

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from unlearn_core.eval.answer_parsing import (
    cloze_correct,
    correct_letter,
    letter_mllmu,
    letter_mmunlearner,
    mllmu_response,
)
from unlearn_core.eval.bench_metrics import bleu, rouge_scores

# (generated text, MLLMU-Bench letter, MMUnlearner letter), four options A-D.
MC_CASES: list[tuple[str, str | None, str | None]] = [
    ("B", "B", "B"),  # MLLMU: first char, upper-cased, is a key
    ("b", "B", "B"),  # MLLMU: .upper()
    (" B", "B", "B"),  # MLLMU: .strip()
    ("B.", "B", "B"),  # MLLMU: only [0] is read
    ("B) lawyer", "B", "B"),
    ("B: lawyer", "B", "B"),
    ("B is correct", "B", "B"),
    ("Be careful", "B", "B"),  # MLLMU: [0] of any word counts; a quirk reproduced, not fixed
    ("BC", "B", "B"),  # two letters: the first wins in both
    ("CB", "C", "C"),
    ("B\nC", "B", "B"),
    ("\nB", "B", "B"),  # MLLMU: .strip() removes the newline
    ("\tc", "C", "C"),
    ("D", "D", "D"),  # a wrong but valid letter
    ("(B)", None, "B"),  # MLLMU: "(" is not a key; MMU: "(" removed first
    ("(b)", None, "B"),
    ("**B**", None, "B"),
    ("[B]", None, "B"),
    ("'B'", None, "B"),
    ('"B"', None, "B"),
    ("- B", None, "B"),
    ("#B", None, "B"),
    ("...B", None, "B"),
    ("✓B", None, "B"),  # MMU: non-ASCII symbols are non-alphanumeric too
    ("ÀB", None, "B"),  # MLLMU: "À".upper() is no key; MMU: [^A-Za-z0-9] removes it
    ("ASSISTANT: B", None, "A"),  # MLLMU: nothing before the model's own marker; MMU: no cut, "ASSISTANTB"
    ("ASSISTANT:B", None, "A"),
    ("USER: Who is it?\nA: x\nB: y\nASSISTANT: B", None, None),  # a continued dialogue: "U" is no key
    ("ASSISTANT: (B)", None, "A"),
    ("ASSISTANT: **b**", None, "A"),
    ("ASSISTANT: C ASSISTANT: B", None, "A"),
    ("ASSISTANT: ", None, "A"),  # MLLMU: empty response -> None; MMU reads the marker's "A"
    ("B\nUSER: next question ASSISTANT: C", "B", "B"),  # MLLMU: the answer before the continuation
    ("C ASSISTANT: B", "C", "C"),
    (" B ASSISTANT:", "B", "B"),
    ("(B) ASSISTANT: C", None, "B"),
    ("", None, None),  # MLLMU: `assistant_response and ...` -> None
    ("   ", None, None),
    ("The answer is B.", None, None),  # MLLMU/MMU: "T" is no key
    ("Answer: B", "A", "A"),  # classification does not cut at "Answer:": its "A" is read
    ("answer: b", "A", "A"),
    ("Correct Answer: B", "C", "C"),  # the few-shot format's own words: "C" is read
    ("I think B", None, None),  # "I" is no key of a 4-way question
    ("Option B", None, None),
    ("lawyer", None, None),  # option text without a letter: never matched to its option
    ("Lawyer", None, None),
    ("a lawyer", "A", "A"),  # option text after an article: read as the letter A
    ("1", None, None),  # digits survive MMU's cleaning but are no key
    ("E", None, None),  # not a key of a 4-way question
]


def test_there_are_at_least_forty_multiple_choice_cases() -> None:
    assert len(MC_CASES) >= 40 and len({c[0] for c in MC_CASES}) == len(MC_CASES)


@pytest.mark.parametrize(("text", "mllmu", "mmu"), MC_CASES)
def test_letter_parses_match_the_references(text: str, mllmu: str | None, mmu: str | None) -> None:
    assert letter_mllmu(text, 4) == mllmu
    assert letter_mmunlearner(text, 4) == mmu


def test_option_keys_follow_the_number_of_options() -> None:
    assert letter_mllmu("E", 5) == "E" and letter_mllmu("I think B", 9) == "I"
    assert correct_letter("lawyer", ["painter", "lawyer", "pilot", "chef"]) == "B"
    assert correct_letter("judge", ["painter", "lawyer"]) is None


def test_mllmu_response_cuts_like_the_reference() -> None:
    assert mllmu_response("  Oslo ") == "Oslo"
    assert mllmu_response("Oslo\nUSER: and Bergen? ASSISTANT: Bergen") == "Oslo\nUSER: and Bergen?"
    assert mllmu_response("USER: q ASSISTANT:  Oslo ") == "USER: q"  # what the model wrote first
    assert mllmu_response("### Answer: Oslo") == "### Answer: Oslo"  # no "Answer:" cut (see CLOZE)
    assert mllmu_response("Oslo. The Answer: unknown") == "Oslo. The Answer: unknown"


LLAVA_PROMPT = (
    "USER: <image>\nWhere was she born?\nJust give ONE letter representing the answer directly.\nASSISTANT:"
)


@pytest.mark.parametrize(
    "generated",
    [case[0] for case in MC_CASES] + ["Oslo. The Answer: unknown", "x Answer: y", "Oslo ASSISTANT: Bergen"],
)
def test_mllmu_response_equals_the_reference_cut_of_prompt_plus_generation(generated: str) -> None:
    """MLLMU: the reference cuts the decoded prompt + generation at its first ``ASSISTANT:``, which is the
    prompt's own for LLaVA; on the new tokens alone the result is the same for every case here."""
    decoded = LLAVA_PROMPT + generated
    reference = decoded.split("ASSISTANT:")[1].strip()  # "ASSISTANT:" is always in a LLaVA decode
    assert mllmu_response(generated) == reference


# (ground truth, generation, correct): CLOZE, no whitespace folding, no stripping of the truth.
CLOZE_CASES: list[tuple[str, str, bool]] = [
    ("Oslo", "She was born in OSLO.", True),  # .lower() on both sides
    ("oslo", "Oslo", True),
    ("Town 1", "born in town 1.", True),
    ("Town 1", "born in Town  1", False),  # a double space is not folded
    ("Town 1", "born in Town\n1", False),  # nor a newline
    ("marine  biologist", "a marine biologist", False),  # the truth's own spaces count too
    ("Oslo ", "Oslo.", False),  # the truth is not stripped
    (" Oslo", "born in Oslo", True),  # ...so a leading space needs a space before it
    ("Oslo", "Osaka", False),
    ("Oslo", "ASSISTANT: Oslo", False),  # the reference searches only the text before the model's marker
    ("Oslo", "Oslo ASSISTANT: Bergen", True),
    ("Bergen", "Oslo ASSISTANT: Bergen", False),
    ("Oslo", "Answer: Oslo", True),
    ("Oslo", "Oslo. The Answer: unknown", True),  # no "Answer:" cut: LLaVA's decode holds "ASSISTANT:"
    ("", "anything", True),  # the reference counts an empty truth as found ("" in s)
]


@pytest.mark.parametrize(("truth", "generation", "expected"), CLOZE_CASES)
def test_cloze_matches_the_reference(truth: str, generation: str, expected: bool) -> None:
    assert cloze_correct(truth, generation) is expected


def test_bleu_is_case_sensitive_like_the_reference() -> None:
    ref, same, lower = "Anna Berg lives in Oslo", "Anna Berg lives in Oslo", "anna berg lives in oslo"
    assert bleu(ref, same) == pytest.approx(1.0)
    expected = sentence_bleu([ref.split()], lower.split(), smoothing_function=SmoothingFunction().method1)
    assert bleu(ref, lower) == pytest.approx(expected) and bleu(ref, lower) < 0.2
    assert bleu(ref, "") == 0.0


def test_rouge_l_recall_differs_from_f_as_in_the_references() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ref, gen = "the cat sat on the mat today", "the cat sat"
    ours = rouge_scores(ref, gen)
    direct = scorer.score(ref, gen)
    assert ours["rougeL_recall"] == pytest.approx(direct["rougeL"].recall) == pytest.approx(3 / 7)
    assert ours["rougeL"] == pytest.approx(direct["rougeL"].fmeasure) == pytest.approx(0.6)
    assert ours["rouge1_recall"] == pytest.approx(3 / 7) and ours["rouge2"] == pytest.approx(
        direct["rouge2"].fmeasure
    )
    assert rouge_scores("Running fast", "runs")["rouge1"] > 0  # the stemmer is on
