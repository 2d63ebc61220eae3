"""Training presets for 7B LVLMs on one 8-GPU cluster node (see cluster.yaml's `gpu` node type).

Each preset is a dict of dotted config overrides (``model.lora_r``, ``train.deepspeed_stage``...)
for the one RunConfig schema, so it goes through the same validation as ``--set`` and Tune trials:
``with_overrides(cfg, PRESETS[name])``. Method weights, steps and the sweep space stay separate.

Choices shared by all presets:
- 8 Ray Train workers x 1 GPU (p4d.24xlarge: 8x A100 40 GB; p5.48xlarge: 8x H100 80 GB), 8 CPUs
  each for data loading; weights loaded in bfloat16 and DeepSpeed bf16 mixed precision.
- LoRA presets: ZeRO-2 (optimizer state and gradients sharded; the frozen 7B base fits on every
  GPU), r=32 / alpha=64 on the LLM's attention (q/k/v/o) and MLP (gate/up/down) projections plus
  the vision encoder's attention projections; the multimodal projector trains in full.
- Full fine-tuning presets: ZeRO-3 (parameters sharded too: 7B weights + AdamW state do not fit
  on one 40 GB GPU otherwise), lower learning rate.
- Gradient checkpointing on; micro-batches sized for the image-token count of each family
  (LLaVA-1.5: 576 per image; LLaVA-NeXT any-res and Qwen2-VL dynamic resolution: up to a few
  thousand) and gradient accumulation bringing every preset to a global batch of 64 sequences.
- Methods with a frozen reference model (kl, npo) hold a second bf16 copy of the weights on each
  GPU unless the reference is the LoRA base with adapters disabled: on 40 GB A100s lower
  ``train.batch_size`` first if those runs go out of memory.
- Checkpoints every 100 steps to the shared storage and 2 restarts, so a spot preemption of the
  GPU node costs at most 100 steps.
"""

from __future__ import annotations

from typing import Any

from unlearn_core.config import ConfigError

GPUS_PER_NODE = 8

# The LLM side of all three families (LLaMA/Vicuna, Mistral, Qwen2) names its projections alike.
_LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Vision-encoder attention: CLIP ViT-L/14 (LLaVA-1.5, LLaVA-NeXT) shares q/k/v_proj and adds
# out_proj; Qwen2-VL's ViT uses a fused `qkv` and `proj`.
_CLIP_TARGETS = [*_LLM_TARGETS, "out_proj"]
_QWEN2_VL_TARGETS = [*_LLM_TARGETS, "qkv", "proj"]

_COMMON: dict[str, Any] = {
    "model.dtype": "bfloat16",
    "model.gradient_checkpointing": True,
    "model.trust_remote_code": False,
    "train.use_gpu": True,
    "train.bf16": True,
    "train.num_workers": GPUS_PER_NODE,
    "train.cpus_per_worker": 8,
    "train.max_grad_norm": 1.0,
    "train.checkpoint_every": 100,
    "train.max_failures": 2,
}

_LORA: dict[str, Any] = {
    **_COMMON,
    "model.lora": True,
    "model.lora_r": 32,
    "model.lora_alpha": 64,
    "model.lora_dropout": 0.05,
    "model.train_vision": True,
    "train.deepspeed_stage": 2,
    "train.lr": 1e-4,
    "train.weight_decay": 0.0,
    "train.warmup_steps": 10,
}

_FULL: dict[str, Any] = {
    **_COMMON,
    "model.lora": False,
    "model.train_vision": True,
    "train.deepspeed_stage": 3,
    "train.lr": 1e-5,
    "train.weight_decay": 0.0,
    "train.warmup_steps": 10,
    "train.batch_size": 1,
    "train.grad_accum": 8,
}

LLAVA_15_7B = "llava-hf/llava-1.5-7b-hf"
LLAVA_NEXT_7B = "llava-hf/llava-v1.6-mistral-7b-hf"
QWEN2_VL_7B = "Qwen/Qwen2-VL-7B-Instruct"

PRESETS: dict[str, dict[str, Any]] = {
    # LLaVA-1.5-7B (Vicuna-7B + CLIP ViT-L/14-336): 576 image tokens, micro-batch 4.
    "llava-1.5-7b-lora": {
        **_LORA,
        "model.spec": LLAVA_15_7B,
        "model.lora_targets": _CLIP_TARGETS,
        "train.batch_size": 4,
        "train.grad_accum": 2,
    },
    "llava-1.5-7b-full": {**_FULL, "model.spec": LLAVA_15_7B},
    # LLaVA-NeXT (v1.6) Mistral-7B: any-res tiling, up to ~2.9k image tokens, micro-batch 2.
    "llava-next-7b-lora": {
        **_LORA,
        "model.spec": LLAVA_NEXT_7B,
        "model.lora_targets": _CLIP_TARGETS,
        "train.batch_size": 2,
        "train.grad_accum": 4,
    },
    "llava-next-7b-full": {**_FULL, "model.spec": LLAVA_NEXT_7B},
    # Qwen2-VL-7B-Instruct: dynamic resolution (token count follows the image size), micro-batch 2.
    "qwen2-vl-7b-lora": {
        **_LORA,
        "model.spec": QWEN2_VL_7B,
        "model.lora_targets": _QWEN2_VL_TARGETS,
        "train.batch_size": 2,
        "train.grad_accum": 4,
    },
    "qwen2-vl-7b-full": {**_FULL, "model.spec": QWEN2_VL_7B},
}


def preset_overrides(name: str) -> dict[str, Any]:
    """A copy of the dotted overrides of preset ``name``; ConfigError lists the known names."""
    if name not in PRESETS:
        raise ConfigError(f"unknown cluster preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return {k: list(v) if isinstance(v, list) else v for k, v in PRESETS[name].items()}
