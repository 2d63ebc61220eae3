"""MLLMU-Bench's few-shot prompts (protocol ``mllmu-bench``) as its ``eval.py`` writes them.

The expected prompts below are written out by hand from ``eval.py`` (``evaluate_classification``,
``evaluate_fill_in_the_blank`` at commit 5762ad6), not produced by the code under test.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from unlearn_core.data.encode import encode_raw_prompt
from unlearn_core.eval.few_shot import plan_few_shot
from unlearn_core.eval.protocols import get_protocol, zero_shot
from unlearn_core.eval.runner import _prompt, model_outputs, select_eval_rows
from unlearn_core.models.tiny import build_tiny_llava
from unlearn_core.models.tokenizer import train_word_tokenizer

IMG = {pid: np.full((32, 32, 3), 30 * i, dtype=np.uint8) for i, pid in enumerate("1234567", start=1)}
MLLMU = get_protocol("mllmu-bench")


def person_rows(pid: str, split: str, config: str) -> list[dict]:
    """One MLLMU-Bench profile as shard rows: 2 image MC, 1 text MC, an image and a text cloze."""
    ent, base = f"mllmu:{pid}", f"mllmu:{config}:{pid}"
    job = f"job{pid}"

    def row(task: str, k: int, question: str, answer: str, options=None, image=True) -> dict:
        return {
            "sample_id": f"{base}:{task}:{k:02d}",
            "entity_id": ent,
            "split": split,
            "task": task,
            "question": question,
            "answer": answer,
            "options": options,
            "image": IMG[pid] if image else None,
        }

    return [
        row("mc_vqa", 0, "What is the job?", job, ["chef", job, "pilot", "zoo"]),
        row("mc_vqa", 1, "Which hat?", "red", ["blue", "green", "red", "none"]),
        row(
            "mc_text", 0, f"Where was P{pid} born?", f"town{pid}", [f"town{pid}", "x", "y", "z"], image=False
        ),
        row("cloze", 0, "The person works as a __.", job),
        row("cloze", 1, f"P{pid} was born in __.", f"town{pid}", image=False),
    ]


def benchmark_rows() -> list[dict]:
    rows = []
    for pid in "1234":
        rows += person_rows(pid, "forget", "forget_10") + person_rows(pid, "forget_unseen", "Test_Set")
    for pid in "567":
        rows += person_rows(pid, "retain", "retain_90")
    rows += person_rows("1", "utility", "Retain_Set")
    for r in rows[-5:]:
        r["entity_id"] = "mllmu-real:1"
    return rows


def drawn(split: str, family: str, people: list[str], n: int, seed: int = 0) -> list[str]:
    """The stated draw: random.sample over the split's sorted people, seeded by seed/split/family."""
    return random.Random(f"{seed}/{split}/{family}").sample(sorted(people), n)


def test_the_draw_leaves_the_drawn_peoples_own_questions_out():
    rows = benchmark_rows()
    kept, plans = plan_few_shot(rows, seed=0)
    forget_people = [f"mllmu:{p}" for p in "1234"]
    retain_people = [f"mllmu:{p}" for p in "567"]
    expected_skipped = set()
    for split, pool in (
        ("forget", forget_people),
        ("forget_unseen", forget_people),
        ("retain", retain_people),
    ):
        mc = drawn(split, "classification", pool, 1)
        cloze = drawn(split, "cloze", pool, 2)
        assert plans[f"{split}/classification/image"].people == tuple(mc)
        assert plans[f"{split}/cloze/text"].people == tuple(cloze)
        # every MC question of the drawn person, both modalities; their cloze questions
        expected_skipped |= {
            r["sample_id"]
            for r in rows
            if r["split"] == split
            and (
                (r["task"] in ("mc_vqa", "mc_text") and r["entity_id"] in mc)
                or (r["task"] == "cloze" and r["entity_id"] in cloze)
            )
        }
        # the examples are the drawn people's forget / retain profile questions (Test_Set: forget's)
        config = "retain_90" if split == "retain" else "forget_10"
        pid = mc[0].split(":")[1]
        examples = [e["sample_id"] for e in plans[f"{split}/classification/image"].examples]
        assert examples == [f"mllmu:{config}:{pid}:mc_vqa:{k:02d}" for k in (0, 1)]
    assert {r["sample_id"] for r in rows} - {r["sample_id"] for r in kept} == expected_skipped
    assert not any(k.startswith("utility/") for k in plans)  # the celebrities: no examples, nothing skipped
    assert {r["sample_id"] for r in kept if r["split"] == "utility"} == {
        r["sample_id"] for r in rows if r["split"] == "utility"
    }
    again, plans_again = plan_few_shot(rows, seed=0)
    assert again == kept and plans_again == plans  # seeded
    other = [p.people for _, p in sorted(plan_few_shot(rows, seed=5)[1].items())]
    assert other != [p.people for _, p in sorted(plans.items())]  # another seed, other people


def _one_person_rows() -> list[dict]:
    """forget: persons 1 and 2 (MC draws one of them); retain: 5, 6 and 7 (cloze draws two)."""
    return (
        person_rows("1", "forget", "forget_10")
        + person_rows("2", "forget", "forget_10")
        + person_rows("5", "retain", "retain_90")
        + person_rows("6", "retain", "retain_90")
        + person_rows("7", "retain", "retain_90")
    )


def test_prompts_are_eval_pys_raw_few_shot_text():
    rows = select_eval_rows(_one_person_rows(), 64, seed=0, every_task=True, few_shot=True)
    by_id = {r["sample_id"]: r for r in rows}
    mc_person = drawn("forget", "classification", ["mllmu:1", "mllmu:2"], 1)[0][-1]
    other = "2" if mc_person == "1" else "1"
    job = f"job{mc_person}"

    mc = by_id[f"mllmu:forget_10:{other}:mc_vqa:00"]
    assert _prompt(mc, MLLMU, None)["text"] == (
        "USER: <image>\nQuestion: What is the job?\nA: chef\nB: "
        + job
        + "\nC: pilot\nD: zoo\nCorrect Answer: B\n"
        "USER: <image>\nQuestion: Which hat?\nA: blue\nB: green\nC: red\nD: none\nCorrect Answer: C\n"
        "USER: <image>\nWhat is the job?\nA: chef\nB: job" + other + "\nC: pilot\nD: zoo\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:"
    )
    assert len(_prompt(mc, MLLMU, None)["images"]) == 3  # the two examples' photos, then the row's own
    text_mc = by_id[f"mllmu:forget_10:{other}:mc_text:00"]
    prompt = _prompt(text_mc, MLLMU, None)
    assert prompt["images"] == [] and prompt["text"] == (
        f"USER:\nQuestion: Where was P{mc_person} born?\nA: town{mc_person}\nB: x\nC: y\nD: z\nCorrect Answer: A\n"
        f"USER:\nWhere was P{other} born?\nA: town{other}\nB: x\nC: y\nD: z\n"
        "Just give ONE letter representing the answer directly.\nASSISTANT:"
    )
    assert not any(r["entity_id"] == f"mllmu:{mc_person}" and r["task"].startswith("mc_") for r in rows)

    # retain cloze: two of the three people drawn; the third one's questions get both as examples
    pair = drawn("retain", "cloze", ["mllmu:5", "mllmu:6", "mllmu:7"], 2)
    (third,) = {"5", "6", "7"} - {p[-1] for p in pair}
    blank = "\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
    image_cloze = _prompt(by_id[f"mllmu:retain_90:{third}:cloze:00"], MLLMU, None)
    assert (
        image_cloze["text"]
        == "".join(
            f"USER:<image>\nThe person works as a [Blank].{blank}\nCorrect Answer: job{p[-1]}\n" for p in pair
        )
        + f"USER: <image>\nThe person works as a [Blank].{blank}\nASSISTANT:"
    )
    text_cloze = _prompt(by_id[f"mllmu:retain_90:{third}:cloze:01"], MLLMU, None)
    assert (
        text_cloze["text"]
        == "".join(
            f"USER:\nP{p[-1]} was born in [Blank].{blank}\nCorrect Answer: town{p[-1]}\n" for p in pair
        )
        + f"USER:\nP{third} was born in [Blank].{blank}\nASSISTANT:"
    )
    assert {r["sample_id"] for r in rows if r["task"] == "cloze" and r["split"] == "retain"} == {
        f"mllmu:retain_90:{third}:cloze:00",
        f"mllmu:retain_90:{third}:cloze:01",
    }
    # zero-shot: the plain lettered prompt in the chat template, every question evaluated
    plain = select_eval_rows(_one_person_rows(), 64, seed=0, every_task=True, few_shot=False)
    assert len(plain) == len(_one_person_rows()) and all("few_shot" not in r for r in plain)
    assert "question" in _prompt(plain[0], zero_shot(MLLMU), None)


def test_the_model_reads_every_example_image_before_its_own():
    """A tiny LLaVA generates from the raw few-shot prompt: one image placeholder per image, expanded
    to the image's tokens, and the pixel batch holds the examples' images and the row's, in order."""
    rows = select_eval_rows(_one_person_rows(), 64, seed=0, every_task=True, few_shot=True)
    texts = [_prompt(r, MLLMU, None)["text"] for r in rows if r.get("few_shot")]
    tok = train_word_tokenizer(texts)
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=32, vision_layers=1, text_layers=1
    )
    mc = next(r for r in rows if r["task"] == "mc_vqa" and r.get("few_shot"))
    prompt = _prompt(mc, MLLMU, proc)
    ids = encode_raw_prompt(proc, text=prompt["text"], images=prompt["images"])["input_ids"]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids[0] == tok.bos_token_id
    assert sum(i == image_id for i in ids) == len(prompt["images"]) * (32 // 16) ** 2 == 3 * 4
    words = tok.decode([i for i in ids if i != image_id], skip_special_tokens=True).split()
    assert (
        words
        == tok.decode(
            tok(prompt["text"].replace("<image>", ""))["input_ids"], skip_special_tokens=True
        ).split()
    )
    torch.manual_seed(0)
    outs = model_outputs(model, proc, rows, protocol=MLLMU)
    assert set(outs) == {r["sample_id"] for r in rows} and all("generation" in o for o in outs.values())
