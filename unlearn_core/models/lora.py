"""Trainable-parameter setup: LoRA (PEFT) or full fine-tuning, with or without the vision side.

- LoRA: adapters on the language model's linear layers whose leaf name is in ``cfg.lora_targets``
  (an empty list means the family's defaults); with ``cfg.train_vision`` also on matching vision
  tower layers, and the projector is trained in full. Everything else is frozen.
- Full fine-tuning: everything trainable except, with ``train_vision=False``, tower + projector.
Either way, parameters the forward pass never uses (LLaVA's vision layers after
``vision_feature_layer``, CLIP's ``post_layernorm``) are frozen and get no adapter, so DDP works
without ``find_unused_parameters``.
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

from unlearn_core.config import ModelConfig
from unlearn_core.models.families import family_of, unused_parameter_names


def lora_target_modules(model: nn.Module, cfg: ModelConfig) -> list[str]:
    """Full names of the ``nn.Linear`` modules that get a LoRA adapter under ``cfg``."""
    fam = family_of(model)
    targets = set(cfg.lora_targets) or set(fam.default_lora_targets)
    allowed = {"language", "vision_tower"} if cfg.train_vision else {"language"}
    unused = set(unused_parameter_names(model))
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.rsplit(".", 1)[-1] in targets
        and fam.part_of(name) in allowed
        and f"{name}.weight" not in unused
    ]
    if not names:
        raise ValueError(
            f"model.lora_targets {sorted(targets)} match no linear layer of this {fam.model_type} model"
        )
    return names


def _set_trainable(model: nn.Module, train_vision: bool, *, lora: bool) -> None:
    fam = family_of(model)
    unused = set(unused_parameter_names(model))
    for name, param in model.named_parameters():
        part = fam.part_of(name)
        if name in unused:
            param.requires_grad_(False)
        elif lora:
            if part == "projector" and train_vision:
                param.requires_grad_(True)
        else:
            param.requires_grad_(train_vision or part == "language")


def apply_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """PEFT-wrapped model when ``cfg.lora``; otherwise the same model with vision frozen as configured."""
    if not cfg.lora:
        _set_trainable(model, cfg.train_vision, lora=False)
        return model
    lora_cfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(model, cfg),
        bias="none",
    )
    peft_model = get_peft_model(model, lora_cfg)
    _set_trainable(peft_model, cfg.train_vision, lora=True)
    return peft_model


def prepare_for_training(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """``apply_lora`` plus gradient checkpointing when ``cfg.gradient_checkpointing``."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return apply_lora(model, cfg)
