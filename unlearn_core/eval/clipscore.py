"""CLIPScore: how well an open answer describes its image, by a CLIP model (off unless asked for).

PUBG (arXiv 2506.02541) reports a CLIPScore of the post-unlearning answers beside its judge scores:
a privacy-safe answer should still describe what is visible. Its values (about 0.18-0.23) are raw
cosine similarities, so ``quality.clipscore`` is that: the mean cosine between the CLIP embedding of
the image and of the answer text. ``quality.clip_s`` is Hessel et al.'s CLIP-S (2021, "CLIPScore: A
Reference-free Evaluation Metric for Image Captioning"): ``2.5 * max(cos, 0)``, the text prefixed
with "A photo depicts " as in that paper. Texts longer than the CLIP text encoder takes are cut
at its maximum length (77 tokens for OpenAI's CLIP), as both do.

Scored answers: the generated answers to the open questions (``identity_vqa``, ``open_vqa``) on the
forget and forget_unseen images, the answers ``quality.*`` reads. Any checkpoint transformers loads
with ``AutoModel`` that has ``get_image_features`` / ``get_text_features`` (CLIP, its variants) works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unlearn_core.data.schema import OPEN_ENDED_TASKS

HESSEL_PREFIX = "A photo depicts "
HESSEL_W = 2.5
CLIP_SPLITS: tuple[str, ...] = ("forget", "forget_unseen")


def _features(out: Any) -> torch.Tensor:
    """Projected features from ``get_*_features`` (a tensor, or an output whose pooler holds them)."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


@dataclass
class ClipScorer:
    model: Any
    tokenizer: Any
    image_processor: Any
    batch_size: int = 32

    @classmethod
    def load(cls, spec: str, *, trust_remote_code: bool = False) -> ClipScorer:
        """A CLIP checkpoint: an HF id or a local folder (model, tokenizer and image processor)."""
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(spec, trust_remote_code=trust_remote_code).eval()
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ValueError(
                f"--clip-model {spec}: {type(model).__name__} has no get_image_features / "
                "get_text_features; pass a CLIP checkpoint"
            )
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        images = AutoImageProcessor.from_pretrained(spec, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, images)

    @torch.no_grad()
    def cosines(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each (image, text) pair's CLIP embeddings; images uint8 [H, W, 3]."""
        out: list[float] = []
        limit = getattr(self.model.config, "text_config", self.model.config).max_position_embeddings
        for i in range(0, len(texts), self.batch_size):
            pixels = self.image_processor(images=list(images[i : i + self.batch_size]), return_tensors="pt")[
                "pixel_values"
            ]
            tokens = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            )
            image_emb = _features(self.model.get_image_features(pixel_values=pixels))
            text_emb = _features(
                self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            )
            out += torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1).tolist()
        return out


def clip_scores(
    rows: Sequence[Mapping[str, Any]],
    outputs: Mapping[str, Mapping[str, Any]],
    scorer: ClipScorer,
    *,
    splits: tuple[str, ...] = CLIP_SPLITS,
    tasks: tuple[str, ...] = OPEN_ENDED_TASKS,
) -> tuple[dict[str, float], dict[str, int], dict[str, dict[str, float]]]:
    """``(metrics, counts, per sample)``: ``quality.clipscore`` (mean raw cosine of image and answer)
    and ``quality.clip_s`` (mean 2.5 * max(cos, 0) with Hessel et al.'s prefix) over the generated
    answers of ``tasks`` on ``splits`` whose row has an ``image`` (uint8 [H, W, 3]); per sample
    ``{"clipscore", "clip_s"}``. Nothing to score gives ``({}, {}, {})``."""
    picked = [
        (str(r["sample_id"]), r["image"], outputs[str(r["sample_id"])]["generation"])
        for r in rows
        if r.get("split") in splits
        and r.get("task") in tasks
        and r.get("image") is not None
        and isinstance(outputs.get(str(r["sample_id"]), {}).get("generation"), str)
    ]
    if not picked:
        return {}, {}, {}
    ids, images, answers = zip(*picked, strict=True)
    raw = scorer.cosines(images, answers)
    prefixed = scorer.cosines(images, [HESSEL_PREFIX + a for a in answers])
    per_sample = {
        sid: {"clipscore": cos, "clip_s": HESSEL_W * max(cos_h, 0.0)}
        for sid, cos, cos_h in zip(ids, raw, prefixed, strict=True)
    }
    n = len(per_sample)
    metrics = {
        "quality.clipscore": sum(s["clipscore"] for s in per_sample.values()) / n,
        "quality.clip_s": sum(s["clip_s"] for s in per_sample.values()) / n,
    }
    return metrics, dict.fromkeys(metrics, n), per_sample
