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
    PreTrainedTokenizerBase,
)


def tiny_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP normalisation at exactly ``image_size`` x ``image_size`` (resize only, no crop)."""
    side = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size=dict(side), crop_size=dict(side), do_center_crop=False)


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
    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def build_tiny_llava(
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int = 64,
    patch_size: int = 16,
    hidden: int = 128,
    vision_layers: int = 3,
    text_layers: int = 3,
    heads: int = 4,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Randomly initialised tiny LLaVA (deterministic in ``seed``) and its processor."""
    config = tiny_llava_config(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        hidden=hidden,
        vision_layers=vision_layers,
        text_layers=text_layers,
        heads=heads,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tiny_llava_processor(tokenizer, image_size=image_size, patch_size=patch_size)


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
