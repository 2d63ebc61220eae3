"""Weight quantization as an attack (Zhang et al., ICLR 2025: an unlearning update smaller than a
quantization bucket vanishes when the weights are rounded, and the forgotten answers come back).

On CPU: exact round-to-nearest (RTN), symmetric, per output channel ("rtn-int8", "rtn-int4"): each row
of every linear layer's weight is scaled by s = max|w_row| / (2^(bits-1) - 1), rounded to the nearest
integer in [-(2^(bits-1) - 1), 2^(bits-1) - 1] and multiplied back, so the model runs in float with
exactly the values a bits-wide integer kernel would use. As bitsandbytes does (transformers keeps the
output embedding in full precision), the output head and everything that is not an ``nn.Linear``
(embeddings, the vision tower's patch convolution, norms, biases) stay as they are.

With a GPU and bitsandbytes installed, ``bnb_quantized`` loads the saved model in bitsandbytes' 8-bit
(LLM.int8) or 4-bit NF4 / FP4 instead, as zzwjames/FailureLLMUnlearning ``utils.load_model`` does.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

RTN_BITS: tuple[int, ...] = (8, 4)


def rtn_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric round-to-nearest of each row of ``weight`` to ``bits`` bits (dequantized, same dtype)."""
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    scale = w.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    return (torch.clamp(torch.round(w / scale), -qmax, qmax) * scale).to(weight.dtype)


def quantized_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers RTN rounds: every ``nn.Linear`` except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def rtn_quantized(model: nn.Module, bits: int) -> nn.Module:
    """A copy of ``model`` whose linear weights are RTN-quantized to ``bits`` bits."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in quantized_linears(out):
            layer.weight.copy_(rtn_quantize(layer.weight, bits))
    return out


def bucket_width(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per row: the step between two neighbouring quantized values (an update of less than half of it
    on an element that is already on the grid is rounded away)."""
    return weight.detach().float().abs().amax(dim=-1) / (2 ** (bits - 1) - 1)


def bnb_available() -> str | None:
    """None when bitsandbytes can quantize here, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device (bitsandbytes quantizes on GPU)"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed"
    return None


def bnb_quantized(model_dir: str | Path, scheme: str) -> nn.Module:
    """The saved model loaded in bitsandbytes ``int8`` (LLM.int8), ``nf4`` or ``fp4`` on the GPU."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    if (why := bnb_available()) is not None:
        raise RuntimeError(f"bitsandbytes quantization unavailable: {why}")
    kwargs: dict[str, Any]
    if scheme == "int8":
        kwargs = {"load_in_8bit": True}
    elif scheme in ("nf4", "fp4"):
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": scheme}
    else:
        raise ValueError(f"unknown bitsandbytes scheme {scheme!r}; valid: int8, nf4, fp4")
    return AutoModelForImageTextToText.from_pretrained(
        str(model_dir),
        quantization_config=BitsAndBytesConfig(**kwargs),
        device_map="auto",
        use_safetensors=True,
    )
