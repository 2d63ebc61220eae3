"""Turn (image, question, answer) into model inputs, for any supported processor family.

Shards store token ids with answer-only labels and the resized uint8 image; ``collate`` pads and
normalises at batch time. The processor expands the image placeholder to the family's number of
image tokens (LLaVA: fixed per size; Qwen2-VL: depends on the image size, so the *resized* image
is used both here and in ``collate``).

Mixed batches (some rows with an image, some text-only) are supported: ``pixel_values`` (and
``image_sizes`` / ``image_grid_thw``) hold the image rows only, in row order; text-only rows have
no image tokens, and every family fills image tokens with image features in order.
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

IGNORE_INDEX = -100
SHARED_IMAGE_KEYS: tuple[str, ...] = ("pixel_values", "image_sizes", "image_grid_thw")
# Image inputs shared by all views of a row (a view may override one with its own prefixed key).
IMAGE_KEYS: tuple[str, ...] = (*SHARED_IMAGE_KEYS, "pixel_attention_mask")
# Per-view text inputs besides input_ids / attention_mask / labels, passed when present.
OPTIONAL_TEXT_KEYS: tuple[str, ...] = ("token_type_ids", "mm_token_type_ids", "position_ids")

ImageLike = Image.Image | np.ndarray | Sequence[Any]


def _square(img: Image.Image, image_size: int) -> Image.Image:
    img = img.convert("RGB")
    w, h = img.size
    if w != h:  # centre crop to a square first, so faces keep their aspect ratio
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return img


def prepare_image(image_bytes: bytes, image_size: int) -> np.ndarray:
    """Decode (EXIF-rotated), centre-crop to a square, resize to ``image_size``: uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        img = ImageOps.exif_transpose(img)
        return np.asarray(_square(img, image_size), dtype=np.uint8).copy()


def to_image_array(image: ImageLike | None, image_size: int | None = None) -> np.ndarray | None:
    """uint8 [H, W, 3] array from a PIL image or array-like; resized when ``image_size`` is given."""
    if image is None:
        return None
    if not isinstance(image, Image.Image):  # arrays, nested lists (Arrow rows), tensors
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"image array must be [H, W, 3], got shape {arr.shape}")
        if image_size is None or arr.shape[:2] == (image_size, image_size):
            return np.ascontiguousarray(arr, dtype=np.uint8)
        image = Image.fromarray(arr.astype(np.uint8))
    if image_size is None:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(_square(image, image_size), dtype=np.uint8).copy()


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def pad_id(processor: Any) -> int:
    tok = tokenizer_of(processor)
    for candidate in (tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _messages(question: str, with_image: bool) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


# Prompt ids per processor, by (question, image shape): the processor expands the image placeholder
# from the image's size alone (LLaVA: a fixed count; LLaVA-Next, Qwen2-VL: from height and width), so
# running its image pipeline for each row asking the same question of a same-size image re-derives
# the same ids (a benchmark asks a few questions of thousands of images of one size).
_PROMPT_IDS: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[int, ...] | None], list[int]]] = (
    weakref.WeakKeyDictionary()
)
PROMPT_CACHE_MAX = 8192


def _prompt_ids(processor: Any, question: str, image: np.ndarray | None) -> list[int]:
    key = (question, None if image is None else tuple(image.shape))
    try:
        cache = _PROMPT_IDS.setdefault(processor, {})
    except TypeError:  # a processor that cannot be weakly referenced
        cache = {}
    if key not in cache:
        ids = _processor_prompt_ids(processor, question, image)
        if len(cache) >= PROMPT_CACHE_MAX:
            return ids
        cache[key] = ids
    return list(cache[key])


def _processor_prompt_ids(processor: Any, question: str, image: np.ndarray | None) -> list[int]:
    return encode_messages(processor, _messages(question, image is not None), image)


def encode_messages(processor: Any, messages: list[dict[str, Any]], image: np.ndarray | None) -> list[int]:
    """Ids of a chat (``messages`` in the chat-template format, at most one ``{"type": "image"}`` item,
    for ``image``) with the generation prompt added and the image tokens expanded: a multi-turn prompt."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = tokenizer_of(processor).bos_token
    add_special = not (bos and text.startswith(bos))  # the template may already hold BOS
    kwargs: dict[str, Any] = {"text": [text], "add_special_tokens": add_special}
    if image is not None:
        kwargs["images"] = [image]
    return [int(i) for i in processor(**kwargs)["input_ids"][0]]


def encode_prompt(
    processor: Any, *, question: str, image: ImageLike | None, image_size: int | None = None
) -> dict[str, list[int]]:
    """Chat-templated prompt (generation prompt added, image tokens expanded): ``{"input_ids"}``."""
    return {"input_ids": _prompt_ids(processor, question, to_image_array(image, image_size))}


def encode_example(
    processor: Any, *, question: str, answer: str, image: ImageLike | None, image_size: int | None = None
) -> dict[str, list[int]]:
    """Prompt + answer + EOS ids; ``labels`` are -100 on prompt and image tokens, ids on the answer."""
    return encode_answers(processor, question=question, answers=[answer], image=image, image_size=image_size)[
        0
    ]


def encode_answers(
    processor: Any,
    *,
    question: str,
    answers: Sequence[str],
    image: ImageLike | None,
    image_size: int | None = None,
) -> list[dict[str, list[int]]]:
    """``encode_example`` of each answer to one question and image, the prompt (its image through the
    processor) encoded once: the options of a multiple-choice row."""
    prompt = _prompt_ids(processor, question, to_image_array(image, image_size))
    tok = tokenizer_of(processor)
    out = []
    for answer in answers:
        ids = [int(i) for i in tok(answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]]
        out.append({"input_ids": prompt + ids, "labels": [IGNORE_INDEX] * len(prompt) + ids})
    return out


def pad_sequences(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    """[B, T_max] long tensor, padded with ``value`` on ``side``."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            t = torch.as_tensor(np.asarray(s, dtype=np.int64))
            if side == "right":
                out[i, : len(s)] = t
            else:
                out[i, width - len(s) :] = t
    return out


def _mm_token_type_ids(processor: Any, input_ids: torch.Tensor) -> torch.Tensor:
    types = torch.zeros_like(input_ids)
    for ids, value in ((processor.image_token_ids, 1), (getattr(processor, "video_token_ids", [None]), 2)):
        for tid in ids:
            if tid is not None:
                types[input_ids == tid] = value
    return types


def collate(
    rows: list[dict[str, Any]],
    processor: Any,
    *,
    prefixes: Sequence[str] = ("",),
    image_key: str = "image",
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Pad each prefix group (``{p}input_ids``, ``{p}attention_mask``, ``{p}labels`` when present).

    Images (uint8 [H, W, 3] under ``image_key``, None for text-only rows) are normalised by the
    processor's image processor once and shared by all prefix groups. Families that need it also
    get ``{p}mm_token_type_ids`` (Qwen2-VL's M-RoPE).
    """
    batch: dict[str, torch.Tensor] = {}
    pad = pad_id(processor)
    needs_types = bool(getattr(processor, "return_mm_token_type_ids", False))
    for p in prefixes:
        seqs = [r[f"{p}input_ids"] for r in rows]
        ids = pad_sequences(seqs, pad, padding_side)
        batch[f"{p}input_ids"] = ids
        batch[f"{p}attention_mask"] = pad_sequences([[1] * len(s) for s in seqs], 0, padding_side)
        if all(r.get(f"{p}labels") is not None for r in rows):
            batch[f"{p}labels"] = pad_sequences([r[f"{p}labels"] for r in rows], IGNORE_INDEX, padding_side)
        if needs_types:
            batch[f"{p}mm_token_type_ids"] = _mm_token_type_ids(processor, ids)
    images = [to_image_array(r[image_key]) for r in rows if r.get(image_key) is not None]
    if images:
        processed = processor.image_processor(
            images=images, return_tensors="pt", input_data_format="channels_last"
        )
        batch.update({k: v for k, v in processed.items() if isinstance(v, torch.Tensor)})
    return batch


def model_inputs(
    batch: Mapping[str, Any], prefix: str = "", *, labels: bool = False, with_images: bool = True
) -> dict[str, Any]:
    """Model kwargs for one view (``prefix``) of a collated batch; the returned keys carry no prefix.

    Picks ``{prefix}input_ids``, ``{prefix}attention_mask``, the optional per-view text keys
    (token types, positions) and ``{prefix}labels`` when ``labels``; with ``with_images`` also the
    image tensors shared by all views (a prefixed image key wins over the shared one).
    """
    key = f"{prefix}input_ids"
    if key not in batch:
        have = sorted(k for k in batch if k.endswith("input_ids"))
        raise KeyError(f"batch has no {key!r} (view {prefix or 'plain'!r}); input views present: {have}")
    out: dict[str, Any] = {"input_ids": batch[key]}
    for name in ("attention_mask", *OPTIONAL_TEXT_KEYS, *(("labels",) if labels else ())):
        if f"{prefix}{name}" in batch:
            out[name] = batch[f"{prefix}{name}"]
    if labels and "labels" not in out:
        raise KeyError(f"batch has no {prefix}labels")
    if with_images:
        for name in IMAGE_KEYS:
            if f"{prefix}{name}" in batch:
                out[name] = batch[f"{prefix}{name}"]
            elif batch.get(name) is not None:
                out[name] = batch[name]
    return out
