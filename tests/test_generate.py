"""Generation end to end: a tiny model trained on two pairs answers them; scoring and top-k agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipeline_fixtures import fit_on_batch
from tests.tiny_families import QWEN2_VL_EXTRA_TOKENS, build_tiny_family
from unlearn_core.data.encode import collate, encode_example
from unlearn_core.models.generate import (
    answer_logprobs,
    apply_instruction,
    eval_mode,
    generate,
    score_options,
    score_options_many,
    teacher_topk,
)
from unlearn_core.models.tiny import build_tiny_llava
from unlearn_core.models.tokenizer import train_word_tokenizer

Q = "Who is this person?"
LONG_Q = "Please tell me , who is this person in the picture ?"
ANSWERS = ("Alice Smith, a baker from Paris.", "Bob Jones.")
CORPUS = [Q, LONG_Q, *ANSWERS, "Describe the image."]


def _solid(channel: int) -> np.ndarray:
    img = np.full((32, 32, 3), 30, dtype=np.uint8)
    img[..., channel] = 220
    return img


IMAGES = (_solid(0), _solid(2))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    tok = train_word_tokenizer(CORPUS)
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=64, vision_layers=2, text_layers=2
    )
    rows = [
        {**encode_example(proc, question=q, answer=a, image=img), "image": img}
        for q in (Q, LONG_Q)
        for a, img in zip(ANSWERS, IMAGES, strict=True)
    ]
    assert fit_on_batch(model, collate(rows, proc), 50) < 0.1
    return model, proc, rows


def test_greedy_generation_reproduces_trained_answers(trained) -> None:
    model, proc, _ = trained
    prompts = [{"question": Q, "image": img} for img in IMAGES]
    assert generate(model, proc, prompts, max_new_tokens=16) == list(ANSWERS)
    assert model.training  # mode restored


def test_left_padding_matches_single_generation(trained) -> None:
    model, proc, _ = trained
    prompts = [
        {"question": LONG_Q, "image": IMAGES[0]},
        {"question": Q, "image": IMAGES[1]},
        {"question": "Who is Alice Smith?", "image": None},
    ]
    batched = generate(model, proc, prompts, max_new_tokens=12, batch_size=3)
    single = [generate(model, proc, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert batched[:2] == list(ANSWERS)


@pytest.mark.parametrize("fam", ["llava_next", "qwen2_vl"])
def test_left_padding_other_families(fam: str) -> None:
    tok = train_word_tokenizer(CORPUS, extra_special_tokens=QWEN2_VL_EXTRA_TOKENS)
    model, proc = build_tiny_family(fam, tok, image_size=32, seed=1)
    prompts = [
        {"question": LONG_Q, "image": IMAGES[0]},
        {"question": Q, "image": None},
        {"question": Q, "image": IMAGES[1]},
    ]
    batched = generate(model, proc, prompts, max_new_tokens=6, batch_size=3)
    assert batched == [generate(model, proc, [p], max_new_tokens=6)[0] for p in prompts]


def test_score_options_ranks_trained_answer_first(trained) -> None:
    model, proc, _ = trained
    options = ["Bob Jones.", "Alice Smith, a baker from Paris.", "Describe the image."]
    for img, answer in zip(IMAGES, ANSWERS, strict=True):
        scores = score_options(model, proc, Q, img, options)
        assert len(scores) == 3 and options[int(np.argmax(scores))] == answer


def test_score_options_many_equals_one_row_at_a_time(trained, monkeypatch) -> None:
    """Rows with and without an image and with different option counts in shared, right-padded
    batches (a budget small enough that a row's options span two batches): each row's scores are
    the ones it gets alone."""
    import unlearn_core.models.generate as gen

    model, proc, _ = trained
    items = [
        (Q, IMAGES[0], ["Bob Jones.", "Alice Smith, a baker from Paris.", "Describe the image."]),
        ("Who is Alice Smith?", None, ["a baker", "Bob Jones.", "Paris", "Describe"]),
        (LONG_Q, IMAGES[1], ["Bob Jones.", "Alice Smith, a baker from Paris."]),
    ]
    monkeypatch.setattr(gen, "SCORE_TOKENS_PER_BATCH", 60)
    many = score_options_many(model, proc, items)

    def one_row(question, img, options):  # one forward over one row's options, without the batching code
        rows = [
            {**encode_example(proc, question=question, answer=o, image=img), "image": img} for o in options
        ]
        with eval_mode(model):
            return answer_logprobs(model, collate(rows, proc)).tolist()

    alone = [one_row(q, img, opts) for q, img, opts in items]
    assert [len(s) for s in many] == [3, 4, 2]
    for got, want in zip(many, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-4) and int(np.argmax(got)) == int(np.argmax(want))
    assert int(np.argmax(many[0])) == 1 and int(np.argmax(many[2])) == 0


def test_answer_logprobs_and_teacher_topk_agree(trained) -> None:
    model, proc, rows = trained
    model.eval()
    with torch.no_grad():
        seq = answer_logprobs(model, collate(rows, proc))
    top = teacher_topk(model, proc, rows, k=3, batch_size=3)
    assert len(top) == len(rows)
    for row, (ids, logp), s in zip(rows, top, seq, strict=True):
        answer = [t for t in row["labels"] if t != -100]
        assert ids.shape == logp.shape == (len(answer), 3)
        assert ids[:, 0].tolist() == answer  # the trained model's argmax is the answer
        assert np.all(np.diff(logp, axis=1) <= 0)
        np.testing.assert_allclose(logp[:, 0].sum(), s.item(), rtol=1e-4, atol=1e-4)
    model.train()
    grad_lp = answer_logprobs(model, collate(rows[:1], proc))
    assert grad_lp.requires_grad


def test_apply_instruction() -> None:
    assert apply_instruction(Q, None) == Q
    assert apply_instruction(Q, "short").endswith(Q) and apply_instruction(Q, "short") != Q
    assert apply_instruction(Q, "Be brief: {question}") == f"Be brief: {Q}"
    assert apply_instruction(Q, "Be brief.") == f"Be brief. {Q}"


def test_chunk_outputs_split_the_rows_between_ranks_and_match_one_process(trained) -> None:
    """The final evaluation's split over training workers: chunk i of EVAL_CHUNK rows goes to rank
    i % world_size, the shares are disjoint and together give what one process computes chunk by chunk."""
    from unlearn_core.eval.runner import EVAL_CHUNK, chunk_outputs, model_outputs

    model, proc, _ = trained
    n = 2 * EVAL_CHUNK + 5
    rows = [
        {"sample_id": f"s{i:04d}", "split": "retain", "task": "open_vqa", "question": (Q, LONG_Q)[i % 2],
         "image": IMAGES[i % 2]}
        for i in range(n)
    ]  # fmt: skip
    shares = [chunk_outputs(model, proc, rows, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in shares] == [EVAL_CHUNK + 5, EVAL_CHUNK]  # chunks 0 and 2 / chunk 1
    assert not set(shares[0]) & set(shares[1])
    merged = {**shares[0], **shares[1]}
    assert sorted(merged) == sorted(r["sample_id"] for r in rows)
    one = {}
    for start in range(0, n, EVAL_CHUNK):
        one.update(model_outputs(model, proc, rows[start : start + EVAL_CHUNK]))
    assert merged == one
    assert {o["generation"] for o in merged.values()} == set(ANSWERS)  # the trained answers, nothing else
