"""DeepSpeed ZeRO config generated from the one TrainConfig (GPU clusters; also runs on CPU/gloo)."""

from __future__ import annotations

from typing import Any

from unlearn_core.config import ConfigError, TrainConfig


def deepspeed_config(tc: TrainConfig, *, world_size: int) -> dict[str, Any]:
    """ZeRO-2 or ZeRO-3 with AdamW; bf16 only when training on GPUs with ``train.bf16``."""
    if tc.deepspeed_stage not in (2, 3):
        raise ConfigError(f"train.deepspeed_stage: expected 2 or 3 for DeepSpeed, got {tc.deepspeed_stage}")
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    zero: dict[str, Any] = {
        "stage": tc.deepspeed_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
        "allgather_bucket_size": 5e7,
    }
    if tc.deepspeed_stage == 3:
        # Full weights are gathered on save so rank 0 can write the HF folder for MLflow.
        zero.update(
            {"stage3_gather_16bit_weights_on_model_save": True, "stage3_param_persistence_threshold": 1e5}
        )
    return {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": tc.grad_accum,
        "train_batch_size": tc.batch_size * tc.grad_accum * world_size,
        "gradient_clipping": tc.max_grad_norm,
        "bf16": {"enabled": bool(tc.use_gpu and tc.bf16)},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW on CPU: DeepSpeed's FusedAdam would be JIT-compiled (~2 min) for no gain there.
            "params": {
                "lr": tc.lr,
                "weight_decay": tc.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                **({} if tc.use_gpu else {"torch_adam": True}),
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
