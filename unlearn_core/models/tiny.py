"""A tiny LLaVA-1.5-architecture model built from scratch (no hub download).

transformers' ``LlavaForConditionalGeneration`` with a small CLIP vision tower and a small Llama,
plus a ``LlavaProcessor`` whose image processor resizes to ``image_size`` (no crop). The vision
feature layer is the last one (-1) so every vision layer is trained; ``default`` feature selection
drops CLS, so an image is ``(image_size // patch_size) ** 2`` ``<image>`` tokens.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


def tiny_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP normalisation at exactly ``image_size`` x ``image_size`` (resize only, no crop)."""
    side = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size=dict(side), crop_size=dict(side), do_center_crop=False)


def tiny_clip_config(
    image_size: int, patch_size: int, hidden: int, layers: int, heads: int
) -> CLIPVisionConfig:
    """A small CLIP vision tower: ``(image_size // patch_size) ** 2`` patches (plus CLS)."""
    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerBase, hidden: int, layers: int, heads: int, max_positions: int = 1024
) -> LlamaConfig:
    """A small Llama for this tokenizer (vocabulary, special-token ids), untied embeddings."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def tiny_llava_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int = 64,
    patch_size: int = 16,
    hidden: int = 128,
    vision_layers: int = 3,
    text_layers: int = 3,
    heads: int = 4,
    max_positions: int = 1024,
) -> LlavaConfig:
    """Config of the tiny LLaVA for this tokenizer (vocabulary, special-token ids)."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return LlavaConfig(
        vision_config=tiny_clip_config(image_size, patch_size, hidden, vision_layers, heads),
        text_config=tiny_llama_config(tokenizer, hidden, text_layers, heads, max_positions),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def use_tokenizer_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Generation pads, starts and stops with the tokenizer's special tokens."""
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))


def build_tiny_llava(
    tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, **sizes: int
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Randomly initialised tiny LLaVA (deterministic in ``seed``) and its processor; ``sizes`` are
    ``tiny_llava_config``'s (``image_size``, ``patch_size``, ``hidden``, layers, ``heads``)."""
    config = tiny_llava_config(tokenizer, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    use_tokenizer_ids(model, tokenizer)
    vision = config.vision_config
    return model, tiny_llava_processor(tokenizer, image_size=vision.image_size, patch_size=vision.patch_size)


def tiny_llava_processor(
    tokenizer: PreTrainedTokenizerBase, *, image_size: int = 64, patch_size: int = 16
) -> LlavaProcessor:
    """The tiny LLaVA's processor: ``(image_size // patch_size) ** 2`` image tokens per image."""
    return LlavaProcessor(
        image_processor=tiny_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=tokenizer.chat_template,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by "default" selection
    )
