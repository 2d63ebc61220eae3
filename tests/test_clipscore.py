"""CLIPScore of open answers (`unlearn eval --clip-model`) on a tiny randomly initialised CLIP built here.

The expected values are the definitions computed by hand from the CLIP towers: the image's pooled
vision output through the visual projection, the text's hidden state at its EOS through the text
projection, their cosine; CLIP-S = 2.5 * max(cos, 0) with the text prefixed "A photo depicts "."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from pipelines.evaluate import clip_score_shard_outputs
from tests.pipeline_fixtures import save_tiny_clip
from unlearn_core.eval.clipscore import ClipScorer, clip_scores
from unlearn_core.eval.metrics import METRIC_DEFINITIONS, higher_is_better


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def hand_cosine(clip_dir, image: np.ndarray, text: str) -> float:
    """cos(W_v pool(vision(image)), W_t h_EOS(text(text))), one pair, no batching or padding."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    pixels = CLIPImageProcessor.from_pretrained(clip_dir)(images=[image], return_tensors="pt")["pixel_values"]
    ids = tokenizer(text, truncation=True, max_length=12, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        v = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)[0]
        h = model.text_model(input_ids=ids).last_hidden_state[0]
        eos = int((ids[0] == tokenizer.eos_token_id).nonzero()[0])
        t = model.text_projection(h[eos])
    return float(v @ t / (v.norm() * t.norm()))


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(n)]


ANSWERS = [
    "a man with a red shirt and a hat",
    "",  # an empty answer is scored too (a degenerate answer is not grounded)
    "woman with glasses " * 8,  # longer than the text tower's 12 positions: cut, as CLIP does
]


def test_clipscore_is_the_cosine_and_clip_s_is_hessels(clip_dir):
    pics = images(3)
    rows = [{"sample_id": f"f{i}", "split": "forget", "task": "open_vqa", "image": pics[i]} for i in range(3)]
    rows += [
        {"sample_id": "u", "split": "forget_unseen", "task": "identity_vqa", "image": pics[0]},
        {"sample_id": "r", "split": "retain", "task": "open_vqa", "image": pics[1]},  # not a forget image
        {"sample_id": "c", "split": "forget", "task": "caption", "image": pics[1]},  # not an open question
        {"sample_id": "t", "split": "forget", "task": "open_vqa", "image": None},  # no image
    ]
    outputs = {f"f{i}": {"generation": a} for i, a in enumerate(ANSWERS)}
    outputs |= {k: {"generation": "a cup"} for k in ("u", "r", "c", "t")}
    metrics, counts, per_sample = clip_scores(rows, outputs, ClipScorer.load(str(clip_dir)))

    pairs = [(pics[0], ANSWERS[0]), (pics[1], ANSWERS[1]), (pics[2], ANSWERS[2]), (pics[0], "a cup")]
    raw = [hand_cosine(clip_dir, img, text) for img, text in pairs]
    hessel = [2.5 * max(hand_cosine(clip_dir, img, "A photo depicts " + text), 0.0) for img, text in pairs]
    assert set(per_sample) == {"f0", "f1", "f2", "u"} and counts == {
        "quality.clipscore": 4,
        "quality.clip_s": 4,
    }
    for sid, cos, cs in zip(("f0", "f1", "f2", "u"), raw, hessel, strict=True):
        assert per_sample[sid]["clipscore"] == pytest.approx(cos, abs=1e-5)
        assert per_sample[sid]["clip_s"] == pytest.approx(cs, abs=1e-5)
    assert metrics["quality.clipscore"] == pytest.approx(sum(raw) / 4, abs=1e-5)
    assert metrics["quality.clip_s"] == pytest.approx(sum(hessel) / 4, abs=1e-5)
    assert len({round(c, 6) for c in raw}) == 4  # the answers and images really change the score
    assert clip_scores(rows[4:], outputs, ClipScorer.load(str(clip_dir))) == ({}, {}, {})
    for name in metrics:
        assert name in METRIC_DEFINITIONS and higher_is_better(name)


def test_shard_rows_are_scored_on_their_pixels_into_the_report(clip_dir):
    """`unlearn eval` rows hold raw uint8 pixels: the scores go into the report's metrics, counts and
    per-sample rows; the other metrics stay as they were."""
    (pixels,) = images(1)
    rows = [
        {
            "sample_id": "a",
            "split": "forget",
            "task": "open_vqa",
            "image_u8": pixels.tobytes(),
            "image_hw": [20, 24],
        }
    ]
    report = {
        "metrics": {"forget.leak_rate": 0.5},
        "counts": {"forget.leak_rate": 1},
        "per_sample": [{"sample_id": "a", "task": "open_vqa"}],
    }
    clip_score_shard_outputs(rows, {"a": {"generation": ANSWERS[0]}}, str(clip_dir), report)
    cos = hand_cosine(clip_dir, pixels, ANSWERS[0])
    assert report["metrics"]["forget.leak_rate"] == 0.5
    assert report["metrics"]["quality.clipscore"] == pytest.approx(cos, abs=1e-5)
    assert report["counts"]["quality.clip_s"] == 1
    assert report["per_sample"][0]["clipscore"] == pytest.approx(cos, abs=1e-5)
    assert math.isfinite(report["per_sample"][0]["clip_s"])


def test_a_model_without_clip_features_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    LlamaModel(
        LlamaConfig(
            vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1
        )
    ).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="no get_image_features.*pass a CLIP checkpoint"):
        ClipScorer.load(str(tmp_path / "llama"))
