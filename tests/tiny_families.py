"""Tiny random models of the real LLaVA, LLaVA-NeXT and Qwen2-VL architectures (with their own
processors), for tests of family-specific code paths: placeholder expansion, module groups, LoRA, M-RoPE.
Test-only: the shipped tiny model is ``unlearn_core.models.tiny.build_tiny_llava``."""

from __future__ import annotations

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from unlearn_core.models.families import Qwen2VLImageOnlyProcessor
from unlearn_core.models.tiny import build_tiny_llava, tiny_clip_config, tiny_llama_config, use_tokenizer_ids

QWEN2_VL_EXTRA_TOKENS: tuple[str, ...] = ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def build_tiny_family(
    model_type: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    image_size: int = 32,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Tiny random model + processor of the real architecture ``llava``, ``llava_next`` or ``qwen2_vl``.

    For tests of family-specific code paths (placeholder expansion, module groups, LoRA, M-RoPE).
    """
    builders = {"llava": _tiny_llava_family, "llava_next": _tiny_llava_next, "qwen2_vl": _tiny_qwen2_vl}
    if model_type not in builders:
        raise ValueError(f"no tiny builder for {model_type!r}; choose from {sorted(builders)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = builders[model_type](tokenizer, image_size, hidden, layers, heads, seed)
    use_tokenizer_ids(model, tokenizer)
    return model, processor


_Built = tuple[PreTrainedModel, ProcessorMixin]


def _tiny_llava_family(
    tok: PreTrainedTokenizerBase, size: int, hidden: int, layers: int, heads: int, seed: int
) -> _Built:
    return build_tiny_llava(
        tok,
        image_size=size,
        patch_size=size // 4,
        hidden=hidden,
        vision_layers=layers,
        text_layers=layers,
        heads=heads,
        seed=seed,
    )


def _tiny_llava_next(
    tok: PreTrainedTokenizerBase, size: int, hidden: int, layers: int, heads: int, seed: int
) -> _Built:
    crop = size // 2  # base view at size/2; a size x size image is split into 2 x 2 crops
    pinpoints = [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop]]
    config = LlavaNextConfig(
        vision_config=tiny_clip_config(crop, crop // 2, hidden, layers, heads),
        text_config=tiny_llama_config(tok, hidden, layers, heads, max_positions=2048),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=crop // 2,
        vision_feature_select_strategy="default",
        chat_template=tok.chat_template,
        num_additional_image_tokens=1,
    )
    return LlavaNextForConditionalGeneration(config), processor


def _tiny_qwen2_vl(
    tok: PreTrainedTokenizerBase, size: int, hidden: int, layers: int, heads: int, seed: int
) -> _Built:
    patch = size // 4  # size x size -> 4 x 4 patches -> 2 x 2 merged = 4 image tokens
    vocab = tok.get_vocab()
    head_dim = hidden // heads
    config = Qwen2VLConfig(
        vision_config={
            "depth": layers,
            "embed_dim": hidden,
            "hidden_size": hidden,
            "num_heads": heads,
            "mlp_ratio": 2,
            "patch_size": patch,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(head_dim),
            },
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=vocab.get("<|video_pad|>", len(tok)),
        vision_start_token_id=vocab.get("<|vision_start|>", len(tok)),
        vision_end_token_id=vocab.get("<|vision_end|>", len(tok)),
        tie_word_embeddings=False,
    )
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": (2 * patch) ** 2, "longest_edge": (4 * size) ** 2},
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = Qwen2VLImageOnlyProcessor(image_processor, tok, chat_template=tok.chat_template)
    return Qwen2VLForConditionalGeneration(config), processor


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim / 2 rotary frequencies over (temporal, height, width) like Qwen2-VL (1:1.5:1.5)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]
