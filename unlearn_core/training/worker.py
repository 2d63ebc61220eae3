"""What a training worker builds: model, processor, optional frozen reference, method, data streams."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn_core.config import ConfigError, RunConfig, TrainConfig
from unlearn_core.tensors import unwrap_model as unwrap
from unlearn_core.training import ds_engine
from unlearn_core.training.steps import make_step, sft_loss

__all__ = ["BuiltModel", "build_worker_model", "check_supported", "ddp_kwargs", "make_step_fn", "sft_loss"]


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


def check_supported(cfg: RunConfig, mode: str = "unlearn") -> None:
    """Refuse what the worker cannot run: methods with their own optimizer steps (saliency-masked
    updates, robust forget updates) under DeepSpeed or with gradient accumulation."""
    if mode == "finetune":
        return
    from unlearn_core.methods import get_method

    method = get_method(cfg.method.name, dict(cfg.method.params))
    if not method.custom_step:
        return
    stage, accum = cfg.train.deepspeed_stage, cfg.train.grad_accum
    if stage:
        raise ConfigError(
            f"train.deepspeed_stage={stage}: method.name={method.name!r} does its own optimizer steps "
            f"({method.own_step_reason()}), which the DeepSpeed engine cannot run; use "
            f"train.deepspeed_stage=0 (DDP)"
            f"{method.deepspeed_hint()}"
        )
    if accum > 1:
        raise ConfigError(
            f"train.grad_accum={accum}: method.name={method.name!r} takes its own optimizer steps "
            f"({method.own_step_reason()}) and cannot accumulate gradients over micro-batches; use "
            f"train.grad_accum=1 and a {accum}x larger train.batch_size{method.deepspeed_hint()}"
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
    """``DistributedDataParallel`` options the method needs (``find_unused_parameters`` for methods
    with a separate retain step, which a text-only retain batch leaves without vision gradients)."""
    return {"find_unused_parameters": bool(built.method is not None and built.method.find_unused_parameters)}


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
