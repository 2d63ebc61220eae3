"""Example encoding (answer-only labels, image-token expansion), image preparation and collation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_families import QWEN2_VL_EXTRA_TOKENS, build_tiny_family
from unlearn_core.data.encode import (
    IGNORE_INDEX,
    collate,
    encode_example,
    encode_prompt,
    model_inputs,
    prepare_image,
    to_image_array,
)
from unlearn_core.models.tokenizer import train_word_tokenizer

CORPUS = ["Who is this person?", "Alice Smith, a baker from Paris.", "Bob Jones.", "Who is Alice Smith?"]
Q = "Who is this person?"


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(CORPUS, extra_special_tokens=QWEN2_VL_EXTRA_TOKENS)


@pytest.fixture(scope="module")
def built(tok) -> dict:
    return {fam: build_tiny_family(fam, tok, image_size=32) for fam in ("llava", "llava_next", "qwen2_vl")}


def _img(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_prepare_image_crops_resizes_deterministically() -> None:
    raw = _png(_img(0, 40, 60))
    a, b = prepare_image(raw, 32), prepare_image(raw, 32)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    gray = io.BytesIO()
    Image.fromarray(_img(1, 20, 20)[..., 0]).save(gray, format="PNG")
    assert prepare_image(gray.getvalue(), 16).shape == (16, 16, 3)
    assert np.array_equal(to_image_array(a.tolist()), a)  # Arrow rows give nested lists
    assert to_image_array(Image.fromarray(_img(2, 48, 40)), 32).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="H, W, 3"):
        to_image_array(np.zeros((4, 4, 4), dtype=np.uint8))


@pytest.mark.parametrize("fam", ["llava", "llava_next", "qwen2_vl"])
def test_answer_only_labels_and_image_tokens(fam: str, built: dict, tok) -> None:
    model, proc = built[fam]
    enc = encode_example(proc, question=Q, answer="Bob Jones.", image=_img(0), image_size=32)
    answer = tok("Bob Jones." + tok.eos_token, add_special_tokens=False)["input_ids"]
    n_prompt = len(enc["input_ids"]) - len(answer)
    assert enc["input_ids"][n_prompt:] == answer
    assert enc["labels"] == [IGNORE_INDEX] * n_prompt + answer
    prompt = encode_prompt(proc, question=Q, image=_img(0), image_size=32)["input_ids"]
    assert prompt == enc["input_ids"][:n_prompt]
    image_id = model.config.image_token_id
    assert enc["input_ids"].count(image_id) > 1  # placeholder expanded
    text = encode_example(proc, question=Q, answer="Bob Jones.", image=None)
    assert image_id not in text["input_ids"]


def test_qwen2_vl_image_tokens_follow_the_resized_image(built: dict) -> None:
    model, proc = built["qwen2_vl"]
    image_id = model.config.image_token_id
    big = _img(0, 64, 64)
    n32 = encode_prompt(proc, question=Q, image=big, image_size=32)["input_ids"].count(image_id)
    n64 = encode_prompt(proc, question=Q, image=big, image_size=64)["input_ids"].count(image_id)
    assert (n32, n64) == (4, 16)
    row = {**encode_example(proc, question=Q, answer="Bob Jones.", image=big, image_size=64), "image": big}
    batch = collate([row], proc)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert batch["mm_token_type_ids"].sum() == 16
    assert torch.isfinite(model(**model_inputs(batch), labels=batch["labels"]).loss)


def test_collate_pads_and_groups_prefixes(built: dict, tok) -> None:
    _, proc = built["llava"]
    a = encode_example(proc, question=Q, answer="Alice Smith, a baker from Paris.", image=_img(0))
    b = encode_example(proc, question=Q, answer="Bob Jones.", image=_img(1))
    rows = [
        {**a, "idk_input_ids": np.asarray(b["input_ids"]), "idk_labels": b["labels"], "image": _img(0)},
        {**b, "idk_input_ids": np.asarray(a["input_ids"]), "idk_labels": a["labels"], "image": _img(1)},
    ]
    batch = collate(rows, proc, prefixes=("", "idk_"))
    la, lb = len(a["input_ids"]), len(b["input_ids"])
    assert batch["input_ids"].shape == (2, max(la, lb)) == batch["idk_input_ids"].shape
    assert batch["attention_mask"].sum(1).tolist() == [la, lb]
    assert batch["input_ids"][1, lb:].eq(tok.pad_token_id).all()
    assert batch["labels"][1, lb:].eq(IGNORE_INDEX).all()
    assert batch["idk_attention_mask"].sum(1).tolist() == [lb, la]
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    left = collate(rows, proc, padding_side="left")
    assert left["attention_mask"][1, : la - lb].eq(0).all() and left["attention_mask"][1, -1] == 1
    text_only = collate([encode_example(proc, question=Q, answer="Bob Jones.", image=None)], proc)
    assert "pixel_values" not in text_only and "labels" in text_only
    prompts = collate([encode_prompt(proc, question=Q, image=None)], proc)
    assert "labels" not in prompts


@pytest.mark.parametrize("fam", ["llava", "llava_next", "qwen2_vl"])
def test_mixed_batch_matches_rows_alone(fam: str, built: dict) -> None:
    """Text-only rows next to image rows: pixel values for the image rows only, same logits."""
    model, proc = built[fam]
    model.eval()
    rows = []
    for i, (img, q) in enumerate([(_img(0), Q), (None, "Who is Alice Smith?"), (_img(1), Q)]):
        frozen = None if img is None else img.copy()
        if frozen is not None:
            frozen.setflags(write=False)  # shards hand read-only views
        rows.append(
            {**encode_example(proc, question=q, answer="Bob Jones.", image=frozen), "image": frozen, "i": i}
        )
    batch = collate(rows, proc)
    with torch.no_grad():
        mixed = model(**model_inputs(batch)).logits
        for i, row in enumerate(rows):
            alone = model(**model_inputs(collate([row], proc))).logits[0]
            n = len(row["input_ids"])
            torch.testing.assert_close(mixed[i, :n], alone[:n], atol=1e-5, rtol=1e-4)
