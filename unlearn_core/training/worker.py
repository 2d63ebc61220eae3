"""What a training worker builds: model, processor, optional frozen reference, method, data streams."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn_core.config import RunConfig, TrainConfig
from unlearn_core.training.loop import unwrap


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


def _load(cfg: RunConfig, processor_dir: str, init_model: str, image_size: int) -> tuple[torch.nn.Module, Any]:
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


def check_supported(cfg: RunConfig, mode: str = "unlearn") -> None:
    """Refuse what the worker cannot run: custom-step methods (their own optimizer steps) under DeepSpeed."""
    stage = cfg.train.deepspeed_stage
    if not stage or mode == "finetune":
        return
    from unlearn_core.config import ConfigError
    from unlearn_core.methods import get_method

    method = get_method(cfg.method.name, dict(cfg.method.params))
    if method.custom_step:
        hint = " or method.params.mask=none" if method.name == "pubg" else ""
        raise ConfigError(
            f"train.deepspeed_stage={stage}: method.name={method.name!r} does its own (saliency-masked) "
            f"optimizer steps, which the DeepSpeed engine cannot run; use train.deepspeed_stage=0 (DDP){hint}"
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
    from unlearn_core.models.lora import prepare_for_training

    # LoRA or full fine-tuning; also freezes what never gets a gradient (DDP would fail on it).
    model = prepare_for_training(model, cfg.model)
    model.train()
    if mode == "finetune":
        return BuiltModel(model=model, processor=processor, cfg=cfg, streams={"train": ("",)})

    from unlearn_core.methods import get_method

    params = dict(cfg.method.params)
    if mask_path is not None and params.get("mask", "both" if cfg.method.name == "mmunlearner" else "none") != "none":
        params["mask_path"] = mask_path
    method = get_method(cfg.method.name, params)
    ref = None
    if method.needs_ref:
        ref = copy.deepcopy(unwrap(model)).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    streams = {"forget": tuple(method.views)}
    if method.needs_retain:
        streams["retain"] = ("",)
    return BuiltModel(model=model, processor=processor, cfg=cfg, streams=streams, method=method, ref=ref)


def sft_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy over answer tokens (labels are -100 elsewhere)."""
    from unlearn_core.methods.base import nll

    return nll(model, batch, "")


def make_step_fn(
    built: BuiltModel,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: dict[str, Iterator[dict[str, Any]]],
    tc: TrainConfig,
) -> Callable[[int], dict[str, float]]:
    """One optimisation step: vanilla SFT (with gradient accumulation) or the method's own step.

    On GPUs with ``train.bf16`` the forward passes run under bf16 autocast (weights stay fp32).
    A DeepSpeed engine as ``model`` gets ``ds_engine.make_ds_step_fn`` (bf16 from its config).
    """
    from unlearn_core.training import ds_engine

    if ds_engine.is_engine(model):
        return ds_engine.make_ds_step_fn(built, model, batches, tc)
    step_fn = _sft_or_method_step(built, model, optimizer, batches, tc)
    if not (tc.use_gpu and tc.bf16 and torch.cuda.is_available()):
        return step_fn

    def bf16_step(step: int) -> dict[str, float]:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return step_fn(step)

    return bf16_step


def _sft_or_method_step(
    built: BuiltModel,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: dict[str, Iterator[dict[str, Any]]],
    tc: TrainConfig,
) -> Callable[[int], dict[str, float]]:
    if built.method is None:

        def sft_step(step: int) -> dict[str, float]:
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(tc.grad_accum):
                loss = sft_loss(model, next(batches["train"])) / tc.grad_accum
                loss.backward()
                total += float(loss.detach())
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], tc.max_grad_norm
            )
            _apply_lr_schedule(optimizer, tc, step)
            optimizer.step()
            return {"loss": total, "grad_norm": float(grad_norm)}

        return sft_step

    method = built.method

    def unlearn_step(step: int) -> dict[str, float]:
        forget = next(batches["forget"])
        retain = next(batches["retain"]) if "retain" in batches else None
        _apply_lr_schedule(optimizer, tc, step)
        return method.train_step(model, optimizer, forget, retain, built.ref, step, max_grad_norm=tc.max_grad_norm)

    return unlearn_step


def _apply_lr_schedule(optimizer: torch.optim.Optimizer, tc: TrainConfig, step: int) -> None:
    """Linear warm-up then cosine decay to 10% of the peak learning rate."""
    import math

    if step < tc.warmup_steps:
        scale = (step + 1) / tc.warmup_steps
    else:
        progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
        scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * scale
