"""Tokenizer, tiny LLaVA, loading/saving, module groups and LoRA across LLaVA, LLaVA-NeXT, Qwen2-VL."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from tests.tiny_families import QWEN2_VL_EXTRA_TOKENS, build_tiny_family
from unlearn_core.config import ModelConfig
from unlearn_core.data.encode import collate, encode_example, model_inputs
from unlearn_core.models.families import (
    UnsupportedModelError,
    family_of,
    module_groups,
    module_parts,
    unused_parameter_names,
)
from unlearn_core.models.loading import load_model_and_processor, save_model, weights_sha256
from unlearn_core.models.lora import apply_lora, lora_target_modules
from unlearn_core.models.tiny import build_tiny_llava, tiny_llava_config, tiny_llava_processor
from unlearn_core.models.tokenizer import SPECIAL_TOKENS, train_word_tokenizer

CORPUS = [
    "Who is this person?",
    "Alice Smith, a baker from Paris.",
    "I do not know who this is.",
    "Bob Jones.",
]
FAMILIES = ("llava", "llava_next", "qwen2_vl")


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _rows(processor, size: int = 32) -> list[dict]:
    """Two image rows and one text-only row (a mixed batch)."""
    rows = []
    for i, (q, a, img) in enumerate(
        [
            ("Who is this person?", "Alice Smith.", _image(0, size)),
            ("Who is this person?", "Bob Jones.", _image(1, size)),
            ("Who is Alice Smith?", "a baker from Paris.", None),
        ]
    ):
        rows.append(
            {**encode_example(processor, question=q, answer=a, image=img, image_size=size), "image": img}
        )
        rows[-1]["id"] = i
    return rows


def _loss(model, processor, size: int = 32) -> torch.Tensor:
    batch = collate(_rows(processor, size), processor)
    return model(**model_inputs(batch), labels=batch["labels"]).loss


def test_tokenizer_is_deterministic_and_decodes_readably() -> None:
    a = train_word_tokenizer(CORPUS)
    b = train_word_tokenizer(list(reversed(CORPUS)))
    assert a.get_vocab() == b.get_vocab()
    assert [a.convert_ids_to_tokens(i) for i in range(5)] == list(SPECIAL_TOKENS)
    for text in CORPUS:
        ids = a(text, add_special_tokens=False)["input_ids"]
        assert a.unk_token_id not in ids
        assert a.decode(ids) == text
    assert a("Alice")["input_ids"][0] == a.bos_token_id
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is this person?"}]}]
    prompt = a.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt == "USER: <image> Who is this person? ASSISTANT:"
    no_gen = a.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
    assert not no_gen.endswith("ASSISTANT:")
    ids = a(prompt)["input_ids"]
    assert ids.count(a.convert_tokens_to_ids("<image>")) == 1


def test_tiny_llava_image_tokens_and_exact_roundtrip(tmp_path: Path) -> None:
    tok = train_word_tokenizer(CORPUS)
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=8, hidden=32, vision_layers=1, text_layers=1
    )
    enc = encode_example(
        proc, question="Who is this person?", answer="Bob Jones.", image=_image(0), image_size=32
    )
    assert enc["input_ids"].count(model.config.image_token_id) == (32 // 8) ** 2
    batch = collate([{**enc, "image": _image(0)}], proc)
    model.eval()
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    save_model(model, proc, tmp_path / "a")
    loaded, proc2 = load_model_and_processor(str(tmp_path / "a"), ModelConfig())
    loaded.eval()
    batch2 = collate(
        [
            {
                **encode_example(proc2, question="Who is this person?", answer="Bob Jones.", image=_image(0)),
                "image": _image(0),
            }
        ],
        proc2,
    )
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded(**model_inputs(batch2)).logits, logits)
    save_model(loaded, proc2, tmp_path / "b")
    assert weights_sha256(tmp_path / "a") == weights_sha256(tmp_path / "b")
    assert not list((tmp_path / "a").glob("*.bin"))


def test_tiny_spec_and_load_errors(tmp_path: Path) -> None:
    cfg = ModelConfig()
    with pytest.raises(ValueError, match="corpus_texts"):
        load_model_and_processor("tiny-llava", cfg)
    model, proc = load_model_and_processor(
        "tiny-llava", cfg, corpus_texts=CORPUS, image_size=32, tiny_kwargs={"hidden": 32, "patch_size": 8}
    )
    assert model.config.model_type == "llava" and proc.tokenizer.image_token == "<image>"
    none, proc_only = load_model_and_processor("tiny-llava", cfg, corpus_texts=CORPUS, processor_only=True)
    assert none is None and proc_only.patch_size == 16
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model_and_processor(str(tmp_path / "missing"), cfg)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_and_processor(str(tmp_path), cfg)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match="bert"):
        load_model_and_processor(str(tmp_path), cfg)
    with pytest.raises(ValueError, match="registry"):
        load_model_and_processor("models:/x@champion", cfg)
    bf16, _ = load_model_and_processor(
        "tiny-llava", ModelConfig(dtype="bfloat16"), corpus_texts=CORPUS, tiny_kwargs={"hidden": 32}
    )
    assert next(bf16.parameters()).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tok = train_word_tokenizer(CORPUS, extra_special_tokens=QWEN2_VL_EXTRA_TOKENS)
    out = {}
    for fam in FAMILIES:
        model, proc = build_tiny_family(fam, tok, image_size=32)
        out[fam] = save_model(model, proc, tmp_path_factory.mktemp(fam))
    return out


@pytest.mark.parametrize("fam", FAMILIES)
def test_family_load_forward_backward_and_groups(fam: str, family_dirs: dict[str, Path]) -> None:
    model, proc = load_model_and_processor(str(family_dirs[fam]), ModelConfig())
    assert model.config.model_type == fam and family_of(model).model_type == fam
    loss = _loss(model, proc)
    loss.backward()
    assert torch.isfinite(loss)
    groups = module_groups(model)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(groups["vision"] + groups["language"]) == sorted(names)
    assert not set(groups["vision"]) & set(groups["language"])
    params = dict(model.named_parameters())
    for group in ("vision", "language"):
        assert any(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in groups[group])
    assert "lm_head.weight" in groups["language"]
    parts = module_parts(model)
    assert parts["projector"] and parts["vision_tower"]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("train_vision", [False, True])
def test_lora_trains_only_adapters_and_projector(
    fam: str, train_vision: bool, family_dirs: dict[str, Path]
) -> None:
    model, proc = load_model_and_processor(str(family_dirs[fam]), ModelConfig())
    cfg = ModelConfig(lora=True, lora_r=4, lora_alpha=8, lora_targets=[], train_vision=train_vision)
    targets = lora_target_modules(model, cfg)
    assert any(family_of(model).part_of(t) == "vision_tower" for t in targets) == train_vision
    peft_model = apply_lora(model, cfg)
    groups = module_groups(peft_model)
    names = [n for n, _ in peft_model.named_parameters()]
    assert sorted(groups["vision"] + groups["language"]) == sorted(names)
    assert any("lora_A" in n for n in groups["language"])
    parts = module_parts(peft_model)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    expected = {n for n in names if "lora_" in n} | (set(parts["projector"]) if train_vision else set())
    assert trainable == expected
    assert any("lora_" in n for n in parts["vision_tower"]) == train_vision
    # lora_B starts at zero: nudge it so the step moves lora_A too
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    _loss(peft_model, proc).backward()
    opt.step()
    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= expected
    assert any("lora_" in n for n in changed)
    if train_vision:
        assert changed & set(parts["projector"])


@pytest.mark.parametrize("fam", ["llava", "qwen2_vl"])
def test_save_lora_model_merged(fam: str, family_dirs: dict[str, Path], tmp_path: Path) -> None:
    model, proc = load_model_and_processor(str(family_dirs[fam]), ModelConfig())
    peft_model = apply_lora(model, ModelConfig(lora=True, lora_r=4, lora_targets=[], train_vision=True))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n or "merger" in n:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.eval()
    batch = collate(_rows(proc), proc)
    with torch.no_grad():
        expected = peft_model(**model_inputs(batch)).logits
    save_model(peft_model, proc, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())  # still a PEFT model
    merged, _ = load_model_and_processor(str(tmp_path), ModelConfig())
    assert not any("lora" in n for n, _ in merged.named_parameters())
    merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**model_inputs(batch)).logits, expected, atol=1e-5, rtol=1e-4)


def test_full_finetune_freezes_vision_when_asked(family_dirs: dict[str, Path]) -> None:
    model, _ = load_model_and_processor(str(family_dirs["llava"]), ModelConfig())
    model = apply_lora(model, ModelConfig(lora=False, train_vision=False))
    groups = module_groups(model)
    params = dict(model.named_parameters())
    assert not any(params[n].requires_grad for n in groups["vision"])
    assert all(params[n].requires_grad for n in groups["language"])
    with pytest.raises(ValueError, match="match no linear layer"):
        lora_target_modules(model, ModelConfig(lora=True, lora_targets=["nonexistent"]))


@pytest.mark.parametrize("feature_layer", [-1, -2])
def test_unused_parameters_are_frozen_so_every_trainable_one_gets_a_grad(feature_layer: int) -> None:
    tok = train_word_tokenizer(CORPUS)
    config = tiny_llava_config(tok, image_size=32, patch_size=8, hidden=32, vision_layers=3, text_layers=1)
    config.vision_feature_layer = feature_layer
    model = LlavaForConditionalGeneration(config)
    proc = tiny_llava_processor(tok, image_size=32, patch_size=8)
    unused = set(unused_parameter_names(model))
    assert any("post_layernorm" in n for n in unused)
    assert any(".layers.2." in n for n in unused) == (feature_layer == -2)
    for cfg in (ModelConfig(lora=False), ModelConfig(lora=True, lora_r=2, lora_targets=[])):
        m = apply_lora(copy.deepcopy(model), cfg)
        _loss(m, proc).backward()
        no_grad = {n for n, p in m.named_parameters() if p.requires_grad and p.grad is None}
        assert not no_grad
    plain = copy.deepcopy(model)
    _loss(plain, proc).backward()
    assert {n for n, p in plain.named_parameters() if p.grad is None} == unused
