"""Load a model + processor from a spec ("tiny-llava", a local folder, or a hub id) and save them back.

Saving policy: a PEFT (LoRA) model is saved *merged* (base weights + B @ A * scaling) as a plain
transformers folder, computed into a fresh state dict so the in-memory model keeps its adapters
and can go on training. Every saved folder therefore loads with ``from_pretrained`` alone and is
what the MLflow pyfunc wraps; no adapter folders, safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel

from unlearn_core.config import ModelConfig
from unlearn_core.models.families import get_family, load_processor
from unlearn_core.models.tiny import build_tiny_llava, tiny_llava_processor
from unlearn_core.models.tokenizer import train_word_tokenizer

TINY_SPEC = "tiny-llava"
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_model_and_processor(
    spec: str,
    cfg: ModelConfig,
    *,
    corpus_texts: Iterable[str] | None = None,
    image_size: int = 64,
    tiny_kwargs: dict[str, Any] | None = None,
    processor_only: bool = False,
) -> tuple[PreTrainedModel | None, Any]:
    """Model (in ``cfg.dtype``) and processor for ``spec``; the model is None with ``processor_only``.

    ``tiny-llava`` builds a fresh tiny LLaVA whose word tokenizer is trained on ``corpus_texts``
    (``tiny_kwargs`` go to ``build_tiny_llava``); an existing folder loads offline; anything shaped
    like ``org/name`` is a hub id (``trust_remote_code=cfg.trust_remote_code``, safetensors only).
    """
    dtype = DTYPES[cfg.dtype]
    if spec == TINY_SPEC:
        if corpus_texts is None:
            raise ValueError("spec 'tiny-llava' needs corpus_texts to train its word tokenizer")
        tokenizer = train_word_tokenizer(corpus_texts)
        kw = tiny_kwargs or {}
        if processor_only:
            patch = kw.get("patch_size", 16)
            return None, tiny_llava_processor(tokenizer, image_size=image_size, patch_size=patch)
        model, processor = build_tiny_llava(tokenizer, image_size=image_size, **kw)
        return model.to(dtype), processor
    if spec.startswith("models:/"):
        raise ValueError(
            f"{spec!r} is an MLflow registry URI; pull it to a folder first (`unlearn pull`, pipelines/tracking)"
        )
    path = Path(spec).expanduser()
    if path.exists() or not _HUB_ID.match(spec):
        return _load_local(path, cfg, dtype, processor_only)
    return _load_hub(spec, cfg, dtype, processor_only)


def _load_local(
    path: Path, cfg: ModelConfig, dtype: torch.dtype, processor_only: bool
) -> tuple[PreTrainedModel | None, Any]:
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved model folder (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if not model_type:
        raise ValueError(f"{config_file} has no model_type")
    get_family(model_type)  # clear error for unsupported architectures
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "local_files_only": True}
    return _load(str(path), model_type, dtype, processor_only, kwargs)


def _load_hub(
    model_id: str, cfg: ModelConfig, dtype: torch.dtype, processor_only: bool
) -> tuple[PreTrainedModel | None, Any]:
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    model_type = AutoConfig.from_pretrained(model_id, **kwargs).model_type
    get_family(model_type)
    return _load(model_id, model_type, dtype, processor_only, kwargs)


def _load(
    name: str, model_type: str, dtype: torch.dtype, processor_only: bool, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel | None, Any]:
    processor = load_processor(name, model_type, **kwargs)
    if processor_only:
        return None, processor
    model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, use_safetensors=True, **kwargs)
    return model, processor


def merged_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the base model with every active LoRA adapter folded into its weight."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
            raise NotImplementedError(f"{name}: DoRA adapters are not supported by save_model")
        weight = module.get_base_layer().weight.detach().clone()
        for adapter in module.active_adapters:
            if adapter in module.lora_A and adapter not in module.merged_adapters:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
        merged[f"{name}.weight"] = weight
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value)
    return out


def save_model(model: nn.Module, processor: Any, out_dir: str | Path) -> Path:
    """Save a loadable transformers folder (safetensors); LoRA models are saved merged."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "get_base_model"):
        model.get_base_model().save_pretrained(out, state_dict=merged_state_dict(model))
    else:
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 over the folder's ``*.safetensors`` files, sorted by name: each file's name, then its bytes.

    The one digest of a model folder: registry tags, pull checks and every cache key use it.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
