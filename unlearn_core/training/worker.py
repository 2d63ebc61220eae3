"""What a training worker builds: model, processor, optional frozen reference, method, data streams."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn_core.config import ConfigError, RunConfig, TrainConfig
from unlearn_core.method_registry import check_supported
from unlearn_core.tensors import unwrap_model as unwrap
from unlearn_core.training import ds_engine
from unlearn_core.training.steps import make_step, sft_loss

__all__ = [
    "BuiltModel",
    "apply_method_needs",
    "build_worker_model",
    "check_supported",
    "ddp_kwargs",
    "make_step_fn",
    "sft_loss",
]


@dataclass
class BuiltModel:
    model: torch.nn.Module
    processor: Any
    cfg: RunConfig
    streams: dict[str, tuple[str, ...]]  # dataset name -> batch view prefixes the collate must build
    method: Any = None  # an UnlearnMethod, or None for the vanilla fine-tune
    ref: torch.nn.Module | None = None

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: check model.lora / model.train_vision")
        return torch.optim.AdamW(params, lr=self.cfg.train.lr, weight_decay=self.cfg.train.weight_decay)

    @staticmethod
    def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
        return unwrap(model)

    def save_final(self, model: torch.nn.Module, folder: Path) -> None:
        from unlearn_core.models.loading import save_model

        save_model(unwrap(model), self.processor, folder)


def _load(
    cfg: RunConfig, processor_dir: str, init_model: str, image_size: int
) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoProcessor

    from unlearn_core.models.loading import load_model_and_processor

    if init_model == "tiny-llava":
        from unlearn_core.models.tiny import build_tiny_llava

        processor = AutoProcessor.from_pretrained(processor_dir)
        torch.manual_seed(cfg.train.seed)
        model, _ = build_tiny_llava(processor.tokenizer, image_size=image_size, seed=cfg.train.seed)
        return model, processor
    model, processor = load_model_and_processor(init_model, cfg.model, image_size=image_size)
    return model, processor


def trainable_model(model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    """LoRA or full fine-tuning as configured (``prepare_for_training``: it also freezes what never
    gets a gradient), with the new adapters drawn from ``train.seed`` whatever the RNG state: the
    saliency-mask job and every training worker get the same LoRA A (DDP broadcasts rank 0's)."""
    from unlearn_core.models.lora import prepare_for_training

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return prepare_for_training(model, cfg.model)


def apply_method_needs(model: torch.nn.Module, method: Any) -> None:
    """Fit the model to what the method declares, before training (a ``ConfigError`` naming the field
    when it cannot): only the parameters matching ``method.trainable_regex()`` stay trainable, each
    ``method.layer_hooks()`` layer exists, and a method that reads no logits (``reads_logits``) trains
    nothing after its last hooked layer (no gradient could reach it)."""
    import re

    from unlearn_core.models.families import decoder_layers, family_of

    regex = method.trainable_regex()
    if regex is not None:
        kept = 0
        for name, p in model.named_parameters():
            if p.requires_grad and not re.search(regex, name):
                p.requires_grad_(False)
            kept += int(p.requires_grad)
        if not kept:
            raise ConfigError(
                f"method {method.name!r}: no trainable parameter matches {regex!r} (check the method's "
                "layer / trainable params and model.lora: LoRA trains only the adapters' parameters)"
            )
    hooks = method.layer_hooks()
    if not hooks:
        return
    layers_name, layers = decoder_layers(model)
    for hook in hooks:
        if not 0 <= hook.index < len(layers):
            raise ConfigError(
                f"method.params.{hook.param}={hook.index}: the language model has {len(layers)} decoder "
                f"layers (valid: 0..{len(layers) - 1})"
            )
    if method.reads_logits:
        return
    last, fam = max(h.index for h in hooks), family_of(model)
    layer_re = re.compile(re.escape(layers_name) + r"\.(\d+)\.")
    after = []
    for name, p in model.named_parameters():
        if not p.requires_grad or fam.part_of(name) != "language":
            continue
        match = layer_re.match(name)
        if (int(match.group(1)) > last) if match else "embed" not in name:
            after.append(name)
    if after:
        raise ConfigError(
            f"method {method.name!r} reads decoder layer {last}'s output only, so these trainable "
            f"parameters after it would get no gradient: {after[:3]}{' ...' if len(after) > 3 else ''}"
        )


def build_worker_model(
    cfg: RunConfig,
    mode: str,
    processor_dir: str,
    init_model: str,
    image_size: int,
    mask_path: str | None = None,
) -> BuiltModel:
    check_supported(cfg, mode)
    model, processor = _load(cfg, processor_dir, init_model, image_size)
    model = trainable_model(model, cfg)
    model.train()
    if mode == "finetune":
        return BuiltModel(model=model, processor=processor, cfg=cfg, streams={"train": ("",)})

    from unlearn_core.methods import get_method

    method = get_method(cfg.method.name, dict(cfg.method.params))
    apply_method_needs(model, method)
    if mask_path is not None and method.mask_spec() is not None and method.params.mask_path is None:
        method = get_method(cfg.method.name, {**cfg.method.params, "mask_path": mask_path})
    ref = None
    if method.needs_ref:
        ref = copy.deepcopy(unwrap(model)).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    streams = {"forget": tuple(method.views)}
    if method.needs_retain:
        streams["retain"] = ("",)
    return BuiltModel(model=model, processor=processor, cfg=cfg, streams=streams, method=method, ref=ref)


def ddp_kwargs(built: BuiltModel) -> dict[str, Any]:
    """``DistributedDataParallel`` options: ``find_unused_parameters`` wherever a rank's batch may hold
    no image, so that its vision tower gets no gradient while another rank's does: methods with a
    separate retain step (a text-only retain batch), and ``train.group_by_length``, which batches the
    short text-only rows together (without it DDP fails at the next step: "Expected to have finished
    reduction in the prior iteration")."""
    own_steps = built.method is not None and built.method.find_unused_parameters
    return {"find_unused_parameters": bool(own_steps or built.cfg.train.group_by_length)}


def make_step_fn(
    built: BuiltModel,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: dict[str, Iterator[dict[str, Any]]],
    tc: TrainConfig,
) -> Callable[[int], dict[str, float]]:
    """One optimisation step: vanilla SFT or the method's, with ``tc.grad_accum`` micro-batches.

    On GPUs with ``train.bf16`` the forward passes run under bf16 autocast (weights stay fp32).
    A DeepSpeed engine as ``model`` gets ``ds_engine.make_ds_step_fn`` (bf16 from its config).
    """
    if ds_engine.is_engine(model):
        return ds_engine.make_ds_step_fn(built.method, built.ref, model, batches, tc)
    step_fn = make_step(built.method, built.ref, model, optimizer, batches, tc)
    if not (tc.use_gpu and tc.bf16 and torch.cuda.is_available()):
        return step_fn

    def bf16_step(step: int) -> dict[str, float]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return step_fn(step)

    return bf16_step
