"""MLLMU-Bench's few-shot prompts, as its ``eval.py`` builds them (protocol ``mllmu-bench``).

The reference prefixes every classification and cloze prompt with solved examples: for each split it
draws people (``random.sample(id_list, n)`` over the split's people), takes every question of that
family of their Full_Set profile with its answer (and their profile photo for the image questions)
as the prefix, and does not evaluate those people's own questions of that family (by question index,
both modalities). What is drawn, per family:

- classification (Image_Textual / Pure_Text multiple choice): 1 person (``eval.py`` at its latest
  commit, 5762ad6, for LLaVA and Idefics2; earlier commits drew 2 for LLaVA);
- cloze (Mask_Task): 2 people for LLaVA (1 for Idefics2, not a family this project loads).

Splits: ``forget`` and ``forget_unseen`` (Test_Set: the reference draws among the forget people and
takes their Full_Set questions) draw among the forget people, ``retain`` / ``retain_unseen`` among the
retain people; ``utility`` (the celebrities) gets none (the reference draws celebrities, who are not in
Full_Set: no example, no question skipped). A person's Full_Set profile is their forget_N / retain_N
profile (Full_Set is the union of the two), so the examples are read from the forget / retain split's
records. The draw is seeded (``random.Random(f"{seed}/{split}/{family}")`` over the people's sorted
ids; the reference's ``random`` is unseeded) and stated in the evaluation report (``few_shot``).

The prompt is the reference's raw LLaVA-1.5 text (no chat template, as ``eval.py`` writes it for
every model), one image placeholder per example image and the question's own image last::

    USER: <image>\\nQuestion: Q1\\nA: a\\nB: b\\nC: c\\nD: d\\nCorrect Answer: B\\n
    USER: <image>\\nQ\\nA: a\\nB: b\\nC: c\\nD: d\\nJust give ONE letter representing the answer directly.\\nASSISTANT:

(pure text: ``USER:\\n`` and no images; cloze: ``USER:<image>\\nQ1 [Blank]...\\nCorrect Answer: gt\\n``
examples, then ``USER: <image>\\nQ [Blank]...\\nASSISTANT:``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unlearn_core.eval.protocols import MC_INSTRUCTION, cloze_question, has_image, lettered_question

FAMILY_TASKS: dict[str, tuple[str, ...]] = {"classification": ("mc_vqa", "mc_text"), "cloze": ("cloze",)}
PEOPLE_DRAWN: dict[str, int] = {"classification": 1, "cloze": 2}  # eval.py for LLaVA (latest commit)
# The split each evaluated split draws its people and examples from (utility: none).
EXAMPLE_SPLIT: dict[str, str] = {
    "forget": "forget",
    "forget_unseen": "forget",
    "retain": "retain",
    "retain_unseen": "retain",
}
_TASK_FAMILY = {task: family for family, tasks in FAMILY_TASKS.items() for task in tasks}


@dataclass(frozen=True)
class FewShot:
    """The examples prefixed to one (split, family, modality)'s prompts, and what they cost."""

    key: str  # "split/family/image|text"
    people: tuple[str, ...]  # the entity ids drawn
    examples: tuple[Mapping[str, Any], ...]  # shard rows of the drawn people (question, answer, image)
    skipped: tuple[str, ...]  # sample ids of the split's rows not evaluated (the drawn people's own)

    def statement(self) -> dict[str, Any]:
        return {
            "people": list(self.people),
            "examples": [str(r["sample_id"]) for r in self.examples],
            "skipped": list(self.skipped),
        }


def question_index(row: Mapping[str, Any]) -> str:
    """The question's index in its family list (the last part of an MLLMU-Bench sample id)."""
    return str(row["sample_id"]).rsplit(":", 1)[-1]


def _modality(row: Mapping[str, Any]) -> str:
    return "image" if has_image(row) else "text"


def plan_few_shot(
    rows: Sequence[Mapping[str, Any]], seed: int = 0
) -> tuple[list[Mapping[str, Any]], dict[str, FewShot]]:
    """``(rows to evaluate, few-shot plan by key)``: the drawn people's own questions of each family
    are left out of their split, as the reference skips them; see the module docstring."""
    by_split: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_split.setdefault(str(r["split"]), []).append(r)
    plans: dict[str, FewShot] = {}
    skipped: set[str] = set()
    for split in sorted(by_split):
        source = EXAMPLE_SPLIT.get(split)
        if source is None:
            continue
        pool = by_split.get(source, [])
        for family, tasks in FAMILY_TASKS.items():
            evaluated = [r for r in by_split[split] if r["task"] in tasks]
            candidates = [r for r in pool if r["task"] in tasks]
            people = sorted({str(r["entity_id"]) for r in candidates})
            if not evaluated or not people:
                continue
            drawn = random.Random(f"{seed}/{split}/{family}").sample(
                people, min(PEOPLE_DRAWN[family], len(people))
            )
            for modality in ("image", "text"):
                examples = tuple(
                    sorted(
                        (r for r in candidates if str(r["entity_id"]) in drawn and _modality(r) == modality),
                        key=lambda r: (drawn.index(str(r["entity_id"])), r["task"], question_index(r)),
                    )
                )
                # eval.py skips the evaluated questions at the examples' indices (their own questions)
                indices = {(str(r["entity_id"]), r["task"], question_index(r)) for r in examples}
                gone = tuple(
                    str(r["sample_id"])
                    for r in evaluated
                    if _modality(r) == modality
                    and (str(r["entity_id"]), r["task"], question_index(r)) in indices
                )
                skipped.update(gone)
                key = f"{split}/{family}/{modality}"
                plans[key] = FewShot(key, tuple(drawn), examples, gone)
    kept = [r for r in rows if str(r["sample_id"]) not in skipped]
    return kept, plans


def few_shot_key(row: Mapping[str, Any]) -> str | None:
    """The plan key of a row (None: a task or split without few-shot examples)."""
    family = _TASK_FAMILY.get(str(row.get("task")))
    if family is None or str(row.get("split")) not in EXAMPLE_SPLIT:
        return None
    return f"{row['split']}/{family}/{_modality(row)}"


def _mc_block(row: Mapping[str, Any]) -> list[str]:
    from unlearn_core.eval.answer_parsing import option_keys

    options = list(row["options"])
    return [f"{k}: {text}" for k, text in zip(option_keys(len(options)), options, strict=True)]


def _correct_letter(row: Mapping[str, Any]) -> str:
    from unlearn_core.eval.answer_parsing import option_keys

    options = list(row["options"])
    return option_keys(len(options))[options.index(row["answer"])]


def few_shot_prompt(row: Mapping[str, Any], examples: Sequence[Mapping[str, Any]], image_token: str) -> str:
    """The reference's raw prompt for ``row`` with ``examples`` before it (see the module docstring);
    one ``image_token`` per example image, then the row's own."""
    image = has_image(row)
    user = f"USER: {image_token}\n" if image else "USER:\n"
    parts = []
    if row["task"] == "cloze":
        for ex in examples:
            head = f"USER:{image_token}\n" if image else "USER:\n"
            parts.append(f"{head}{cloze_question(str(ex['question']))}\nCorrect Answer: {ex['answer']}\n")
        return "".join(parts) + f"{user}{cloze_question(str(row['question']))}\nASSISTANT:"
    for ex in examples:
        lines = [f"Question: {ex['question']}", *_mc_block(ex), f"Correct Answer: {_correct_letter(ex)}"]
        parts.append(user + "\n".join(lines) + "\n")
    question = lettered_question(str(row["question"]), list(row["options"]))
    return "".join(parts) + f"{user}{question}\n{MC_INSTRUCTION}\nASSISTANT:"
