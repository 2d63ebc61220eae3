"""The 7B path on a GPU: LLaVA-1.5-7B's real dimensions, trained the project's way under DeepSpeed.

The model is built from its configuration alone (the values of llava-hf/llava-1.5-7b-hf's config,
written below: no download) and randomly initialised: 32 Llama layers of width 4,096 (6.7B parameters)
behind a CLIP ViT-L/14 at 336 px (0.3B) and the 2-layer projector. It is trained by the project's
own code: ``unlearn_core.training.worker.trainable_model`` (LoRA or full, as ``model.lora`` says),
``ds_engine.init_engine`` (ZeRO-2 or ZeRO-3, bf16, AdamW) and ``ds_engine.make_ds_step_fn`` with the
method's loss: GA, and PUBG with its cached teacher (the ``guide_`` view against the cached top-k,
the ascent view and the retain view: three forward/backward passes per step). Batches are synthetic
tensors of the shapes the workers build: 576 image tokens per 336 px image, then text, the answer
labelled.

Per case: step time, tokens/s (all views), peak GPU memory, and model FLOPs utilisation: model FLOPs
per step (per token: 6 x the parameters that train, 4 x the frozen ones a gradient passes through,
2 x those it does not, plus causal attention's 6 x layers x width x sequence) over the step time and
the GPUs' dense bf16 peak. A case that does not fit (full fine-tuning of 7B on one 80 GB GPU: its
AdamW states alone are 80 GB) is reported as out of memory, not hidden.

Run on a GPU node, one command (``torchrun`` shards ZeRO over the node's GPUs):
    .venv/bin/python bench/gpu_check.py
    .venv/bin/torchrun --nproc_per_node 8 bench/gpu_check.py --batch 4 --seq 2048
On a machine without a GPU the same code runs at tiny dimensions (a 2-layer model, CPU, fp32, gloo),
says so, and reports no MFU: a check that the path works, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

# llava-hf/llava-1.5-7b-hf's config.json, the values that set the shapes.
LLAVA_15_7B = {
    "text": {
        "vocab_size": 32064,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    },
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "projection_dim": 768,
    },
    "image_token_index": 32000,
    "pad_token_id": 32001,
}
TINY = {
    "text": {
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    },
    "vision": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
        "projection_dim": 32,
    },
    "image_token_index": 1000,
    "pad_token_id": 1001,
}
# Dense bf16 peak TFLOP/s per GPU (vendor datasheets), matched on the device name.
PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


def build_model(dims: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised LLaVA of ``dims`` (no weights read), on ``device`` in ``dtype``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        text_config=LlamaConfig(**dims["text"], pad_token_id=dims["pad_token_id"]),
        vision_config=CLIPVisionConfig(**dims["vision"]),
        image_token_index=dims["image_token_index"],
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model


def image_tokens(dims: dict[str, Any]) -> int:
    return (dims["vision"]["image_size"] // dims["vision"]["patch_size"]) ** 2  # CLS dropped ("default")


def view(
    dims: dict[str, Any], batch: int, seq: int, device: torch.device, dtype: torch.dtype, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """One view of a batch: image tokens, question, answer (the last quarter, labelled)."""
    n_img = image_tokens(dims)
    text = torch.randint(0, dims["image_token_index"], (batch, seq - n_img), generator=gen)
    ids = torch.cat([torch.full((batch, n_img), dims["image_token_index"]), text], dim=1)
    labels = torch.full_like(ids, -100)
    labels[:, -seq // 4 :] = ids[:, -seq // 4 :]
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
    }


def batches(
    method: Any, dims: dict[str, Any], batch: int, seq: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """The forget (and retain) batches the method reads, repeated: every view it asks for, the pixels,
    and for cached PUBG the teacher's top-k over the ``guide_`` positions."""
    from unlearn_core.data.teacher_cache import GUIDE_KEEP, TOPK_IDS, TOPK_LOGPROBS

    gen = torch.Generator().manual_seed(0)
    size = dims["vision"]["image_size"]
    pixels = torch.randn(batch, 3, size, size, generator=gen).to(device, dtype)
    forget: dict[str, Any] = {"pixel_values": pixels}
    for prefix in method.views:
        forget.update({f"{prefix}{k}": v for k, v in view(dims, batch, seq, device, dtype, gen).items()})
    if "guide_" in method.views and getattr(method.params, "teacher_cache", False):
        k = 16
        forget[TOPK_IDS] = torch.randint(0, dims["image_token_index"], (batch, seq, k), generator=gen).to(
            device
        )
        lps = torch.log_softmax(torch.randn(batch, seq, k, generator=gen), dim=-1)
        forget[TOPK_LOGPROBS] = lps.sort(dim=-1, descending=True).values.to(device)
        forget[GUIDE_KEEP] = torch.ones(batch, dtype=torch.bool, device=device)
    out = {"forget": itertools.repeat(forget)}
    if method.needs_retain:
        out["retain"] = itertools.repeat(
            {"pixel_values": pixels, **view(dims, batch, seq, device, dtype, gen)}
        )
    return out


def model_flops(model: torch.nn.Module, dims: dict[str, Any], tokens: int, images: int, seq: int) -> float:
    """Model FLOPs of forward + backward over ``tokens`` language tokens and ``images`` images."""
    lm, vis = 0.0, 0.0
    vision_trains = any(p.requires_grad for n, p in model.named_parameters() if "vision_tower" in n)
    for name, p in model.named_parameters():
        if "vision_tower" in name:
            vis += p.numel() * (6 if p.requires_grad else 4 if vision_trains else 2)
        else:
            lm += p.numel() * (6 if p.requires_grad else 4)
    t, v = dims["text"], dims["vision"]
    attention = 6 * t["num_hidden_layers"] * t["hidden_size"] * seq  # causal: half of 12 L H S
    patches = image_tokens(dims) + 1
    vis_attention = 12 * v["num_hidden_layers"] * v["hidden_size"] * patches
    return tokens * (lm + attention) + images * patches * (vis + vis_attention)


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def one_case(
    method_name: str, lora: bool, stage: int, *, dims: dict[str, Any], gpu: bool, args: argparse.Namespace,
    world: int, rank: int, local_rank: int,
) -> dict[str, Any]:  # fmt: skip
    from unlearn_core.config import RunConfig, with_overrides
    from unlearn_core.methods import get_method
    from unlearn_core.training import ds_engine
    from unlearn_core.training.worker import trainable_model

    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    params = {"teacher_cache": True} if method_name == "pubg" else {}
    cfg = with_overrides(
        RunConfig(),
        {
            "method.name": method_name,
            "method.params": params,
            "model.lora": lora,
            "model.gradient_checkpointing": args.checkpointing,
            "train.deepspeed_stage": stage,
            "train.batch_size": args.batch,
            "train.use_gpu": gpu,
            "train.bf16": True,
            "train.lr": 1e-5,
        },
    )
    method = get_method(method_name, params)
    torch.manual_seed(0)
    engine = None
    try:
        model = trainable_model(build_model(dims, device, dtype), cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        passes = len(method.views) + int(method.needs_retain)
        tokens = passes * args.batch * args.seq * world
        flops = model_flops(
            model, dims, tokens, passes * args.batch * world, args.seq
        )  # before ZeRO-3 shards it
        engine = ds_engine.init_engine(
            model, cfg.train, world_size=world, local_rank=local_rank,
            optimizer_overrides={"torch_adam": True} if args.torch_adam else None,
        )  # fmt: skip
        step = ds_engine.make_ds_step_fn(
            method, None, engine, batches(method, dims, args.batch, args.seq, device, dtype), cfg.train
        )
        for i in range(args.warmup):
            step(i)
        if gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(args.steps):
            stats = step(args.warmup + i)
        if gpu:
            torch.cuda.synchronize()
        step_s = (time.perf_counter() - t0) / args.steps
        peak = peak_tflops(torch.cuda.get_device_name(local_rank), args.peak_tflops) if gpu else None
        return {
            "method": method_name + (" (cached teacher)" if method_name == "pubg" else ""),
            "mode": "LoRA" if lora else "full",
            "zero": stage,
            "params": total,
            "trainable": trainable,
            "step_s": step_s,
            "tokens_per_s": tokens / step_s,
            "peak_mem_gb": torch.cuda.max_memory_allocated(local_rank) / 2**30 if gpu else float("nan"),
            "tflops_per_gpu": flops / step_s / world / 1e12,
            "mfu": flops / step_s / (peak * 1e12 * world) if peak else float("nan"),
            "loss": stats.get("loss"),
            "status": "ok",
        }
    except torch.cuda.OutOfMemoryError as err:
        return {
            "method": method_name, "mode": "LoRA" if lora else "full", "zero": stage,
            "status": f"out of memory on {world} GPU(s): {str(err).splitlines()[0][:120]}",
        }  # fmt: skip
    finally:
        del engine
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=None, help="sequences per GPU (default 4 on GPU, 2 on CPU)")
    ap.add_argument(
        "--seq", type=int, default=None, help="tokens per sequence (default 1024 on GPU, 64 on CPU)"
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)"
    )
    ap.add_argument(
        "--torch-adam", action="store_true", help="torch's AdamW instead of DeepSpeed's fused one (no nvcc)"
    )
    ap.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing (model.gradient_checkpointing)"
    )
    ap.add_argument(
        "--cases",
        default="ga:lora:2,ga:lora:3,ga:full:2,ga:full:3,pubg:lora:2,pubg:lora:3,pubg:full:2,pubg:full:3",
    )
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    dims = LLAVA_15_7B if gpu else TINY
    args.batch = args.batch or (4 if gpu else 2)
    args.seq = args.seq or (1024 if gpu else 64)
    world, rank, local_rank = (
        int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0))
    )
    if gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
        dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world)
    say = print if rank == 0 else (lambda *a, **k: None)
    if rank == 0:
        common.header("bench/gpu_check.py: LLaVA-1.5-7B dimensions under DeepSpeed ZeRO (the project's step)")
    if gpu:
        say(
            f"{world} x {torch.cuda.get_device_name(local_rank)}: LLaVA-1.5-7B dimensions, bf16, batch {args.batch} x {args.seq} tokens per GPU"
        )
    else:
        say(
            "NO GPU: the same code at TINY dimensions (2-layer LLaVA, fp32, CPU, gloo): this checks the path; "
            "its timings and memory say nothing about 7B, and there is no MFU. Run it on a GPU node for the figures."
        )
    rows, results = [], []
    for case in args.cases.split(","):
        method, mode, stage = case.split(":")
        r = one_case(
            method,
            mode == "lora",
            int(stage),
            dims=dims,
            gpu=gpu,
            args=args,
            world=world,
            rank=rank,
            local_rank=local_rank,
        )
        results.append(r)
        say(
            f"  {case}: {r['status']}" + (f", {r['step_s']:.3f} s/step" if r["status"] == "ok" else ""),
            flush=True,
        )
        if r["status"] == "ok":
            rows.append([
                r["method"], r["mode"], f"ZeRO-{r['zero']}", _count(r["params"]), _count(r["trainable"]),
                f"{r['step_s']:.3f}", f"{r['tokens_per_s']:.0f}", f"{r['peak_mem_gb']:.1f}", f"{r['tflops_per_gpu']:.1f}",
                f"{100 * r['mfu']:.1f}%" if r["mfu"] == r["mfu"] else "-",
            ])  # fmt: skip
        else:
            rows.append([r["method"], r["mode"], f"ZeRO-{r['zero']}", "", "", r["status"], "", "", "", ""])
    if rank == 0:
        print()
        table = common.table(
            [
                "method",
                "fine-tuning",
                "DeepSpeed",
                "params",
                "trainable",
                "step s",
                "tokens/s",
                "peak GB/GPU",
                "TFLOP/s/GPU",
                "MFU",
            ],
            rows,
        )
        common.save(
            "gpu_check",
            {
                "gpu": gpu,
                "world": world,
                "batch": args.batch,
                "seq": args.seq,
                "dims": "llava-1.5-7b" if gpu else "tiny",
                "cases": results,
                "table": table,
            },
        )
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
