"""What differs between the supported LVLM families: module layout, LoRA targets, processor loading.

Parameters split into three parts: ``vision_tower`` (the image encoder), ``projector`` (what maps
image features into the LLM: LLaVA's multi-modal projector and LLaVA-NeXT's ``image_newline``,
Qwen2-VL's patch merger) and ``language`` (the LLM, embeddings and ``lm_head`` included).
MMUnlearner's module groups are ``vision`` = tower + projector and ``language``. Names are matched
by dotted components, so PEFT prefixes (``base_model.model.``) and LoRA leaves (``lora_A``) work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    ProcessorMixin,
    Qwen2VLProcessor,
)
from transformers.utils import is_torchvision_available

PARTS: tuple[str, ...] = ("vision_tower", "projector", "language")
GROUPS: tuple[str, ...] = ("vision", "language")


@dataclass(frozen=True)
class Family:
    """Layout of one architecture; ``*_roots`` are module-name components that start a part."""

    model_type: str
    tower_roots: tuple[str, ...]
    projector_roots: tuple[str, ...]
    language_roots: tuple[str, ...]
    lora_language: tuple[str, ...]
    lora_vision: tuple[str, ...]

    def part_of(self, name: str) -> str | None:
        """The part a parameter or module name belongs to (projector wins over tower), or None."""
        comps = set(name.split("."))
        if comps & set(self.projector_roots):
            return "projector"
        if comps & set(self.tower_roots):
            return "vision_tower"
        if comps & set(self.language_roots):
            return "language"
        return None

    @property
    def default_lora_targets(self) -> list[str]:
        return sorted(set(self.lora_language) | set(self.lora_vision))


_LLAMA_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
FAMILIES: dict[str, Family] = {
    "llava": Family(
        model_type="llava",
        tower_roots=("vision_tower",),
        projector_roots=("multi_modal_projector",),
        language_roots=("language_model", "lm_head"),
        lora_language=_LLAMA_ATTN,
        lora_vision=("q_proj", "k_proj", "v_proj", "out_proj"),  # CLIP attention
    ),
    "llava_next": Family(
        model_type="llava_next",
        tower_roots=("vision_tower",),
        projector_roots=("multi_modal_projector", "image_newline"),
        language_roots=("language_model", "lm_head"),
        lora_language=_LLAMA_ATTN,
        lora_vision=("q_proj", "k_proj", "v_proj", "out_proj"),
    ),
    "qwen2_vl": Family(
        model_type="qwen2_vl",
        tower_roots=("visual",),
        projector_roots=("merger",),  # visual.merger: the 2x2 patch merger into the LLM width
        language_roots=("language_model", "lm_head"),
        lora_language=_LLAMA_ATTN,
        lora_vision=("qkv", "proj"),  # Qwen2-VL vision attention
    ),
}


class UnsupportedModelError(ValueError):
    """The model's ``model_type`` has no entry in FAMILIES."""


def get_family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported model_type {model_type!r}; supported: {sorted(FAMILIES)} "
            "(add an entry to unlearn_core.models.families.FAMILIES)"
        )
    return FAMILIES[model_type]


def family_of(model: nn.Module) -> Family:
    """The family of a (possibly PEFT-wrapped) model, from its config's ``model_type``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return get_family(base.config.model_type)


def module_parts(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names (as ``model.named_parameters()`` gives them) per part; each name exactly once."""
    fam = family_of(model)
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    unknown = []
    for name, _ in model.named_parameters():
        part = fam.part_of(name)
        if part is None:
            unknown.append(name)
        else:
            parts[part].append(name)
    if unknown:
        raise ValueError(f"{fam.model_type}: parameters outside every module part: {unknown[:5]}")
    return parts


def module_groups(model: nn.Module) -> dict[str, list[str]]:
    """MMUnlearner's groups: ``vision`` (tower + projector) and ``language`` (the LLM, lm_head too)."""
    parts = module_parts(model)
    return {"vision": parts["vision_tower"] + parts["projector"], "language": parts["language"]}


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The language model's decoder layers: ``(name, ModuleList)`` of the ``layers`` list of the
    language part (PEFT prefixes included in the name), for methods that read a layer's output."""
    fam = family_of(model)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and name.rsplit(".", 1)[-1] == "layers"
        and fam.part_of(name) == "language"
    ]
    if len(found) != 1:
        raise ValueError(
            f"{fam.model_type}: expected one 'layers' list in the language model, found {[n for n, _ in found]}"
        )
    return found[0]


def _used_vision_layers(config: Any) -> int | None:
    """Number of leading vision encoder layers whose output LLaVA reads (None: all)."""
    layer = getattr(config, "vision_feature_layer", None)
    if layer is None:
        return None
    n = config.vision_config.num_hidden_layers
    indices = layer if isinstance(layer, list) else [layer]
    return max(i % (n + 1) for i in indices)  # hidden_states[k] is the output of layer k - 1


def unused_parameter_names(model: nn.Module) -> list[str]:
    """Parameters the forward pass never touches, so they never get a gradient.

    LLaVA(-NeXT) reads hidden states of layer ``vision_feature_layer`` (default -2) and never the
    CLIP ``post_layernorm``: later layers and that norm are dead weight. Freeze them (DDP without
    ``find_unused_parameters`` fails on parameters that require grad but never get one).
    """
    fam = family_of(model)
    if fam.model_type not in ("llava", "llava_next"):
        return []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    used = _used_vision_layers(base.config)
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    unused = []
    for name, _ in model.named_parameters():
        if fam.part_of(name) != "vision_tower":
            continue
        match = layer_re.search(name)
        if "post_layernorm" in name.split(".") or (
            match and used is not None and int(match.group(1)) >= used
        ):
            unused.append(name)
    return unused


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor (which needs torchvision).

    Saves as a plain ``Qwen2VLProcessor`` config so other machines load the standard class.
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        video = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        in_vocab = video in tokenizer.get_vocab()
        self.video_token = video if in_vocab else None
        self.video_token_id = tokenizer.convert_tokens_to_ids(video) if in_vocab else None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["processor_class"] = "Qwen2VLProcessor"
        ip = self.image_processor  # a matching video processor, for machines that have torchvision
        out.setdefault(
            "video_processor",
            {
                "video_processor_type": "Qwen2VLVideoProcessor",
                "patch_size": ip.patch_size,
                "merge_size": ip.merge_size,
                "temporal_patch_size": ip.temporal_patch_size,
                "image_mean": list(ip.image_mean),
                "image_std": list(ip.image_std),
            },
        )
        return out


def load_processor(
    path: str | Path, model_type: str, *, trust_remote_code: bool = False, **kwargs: Any
) -> Any:
    """AutoProcessor, except Qwen2-VL without torchvision: image processor + tokenizer only."""
    if model_type == "qwen2_vl" and not is_torchvision_available():
        image_processor = AutoImageProcessor.from_pretrained(
            path, trust_remote_code=trust_remote_code, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        return Qwen2VLImageOnlyProcessor(image_processor, tokenizer, chat_template=tokenizer.chat_template)
    return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
