"""MMUnlearner saliency: Fisher/ratio mask vs hand computation, masked updates that really only touch
masked-in entries (full fine-tuning and PEFT LoRA), mask files."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from torch import Tensor, nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast

from unlearn_core.methods import get_method
from unlearn_core.methods.base import nll
from unlearn_core.methods.saliency import (
    SaliencyMask,
    check_mask_matches,
    compute_saliency_masks,
    fisher_diagonal,
    resolve_groups,
)

V = 9
IMAGE_TOKEN = 39


class BigramLM(nn.Module):
    def __init__(self, vocab: int = V, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g))

    def forward(self, input_ids: Tensor, **_: object) -> CausalLMOutputWithPast:
        return CausalLMOutputWithPast(logits=self.table[input_ids])


def bigram_view(seed: int, B: int = 2, prompt: int = 2, answer: int = 3) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, prompt + answer), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
        ),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(cfg)


def llava_batch(seed: int, B: int = 2, text_only: bool = False, prefix: str = "") -> dict[str, Tensor]:
    """[BOS] + 4 image tokens (2x2 patches) + prompt(3) + answer(4); labels only on the answer."""
    g = torch.Generator().manual_seed(seed)
    n_img = 0 if text_only else 4
    prompt = torch.randint(2, IMAGE_TOKEN - 1, (B, 3), generator=g)
    answer = torch.randint(2, IMAGE_TOKEN - 1, (B, 4), generator=g)
    ids = torch.cat(
        [torch.ones(B, 1, dtype=torch.long), torch.full((B, n_img), IMAGE_TOKEN), prompt, answer], 1
    )
    labels = torch.full_like(ids, -100)
    labels[:, -4:] = answer
    out = {
        f"{prefix}input_ids": ids,
        f"{prefix}attention_mask": torch.ones_like(ids),
        f"{prefix}labels": labels,
    }
    if not text_only:
        out["pixel_values"] = torch.randn(B, 3, 16, 16, generator=g)
    return out


def llava_groups(model: nn.Module) -> dict[str, list[str]]:
    """Module prefixes of the plain (non-PEFT) model, as a model-family helper would list them."""
    return {
        "vision": ["model.vision_tower", "model.multi_modal_projector"],
        "language": ["model.language_model", "lm_head"],
    }


def llava_masks(model: nn.Module, gamma: float = 1.0) -> SaliencyMask:
    retain_vqa, retain_text = llava_batch(2), llava_batch(4, text_only=True)
    return compute_saliency_masks(
        model,
        llava_groups,
        [llava_batch(1), llava_batch(3)],
        {"vision": [retain_vqa], "language": [retain_vqa, retain_text]},
        gamma=gamma,
    )


# ---- Fisher and ratio mask -----------------------------------------------------------------------
def hand_grad(model: BigramLM, view: dict[str, Tensor]) -> Tensor:
    logits = model.table[view["input_ids"]]
    terms = []
    for b in range(view["labels"].shape[0]):
        for t in range(1, view["labels"].shape[1]):
            if view["labels"][b, t] != -100:
                terms.append(-torch.log_softmax(logits[b, t - 1], -1)[view["labels"][b, t]])
    return torch.autograd.grad(torch.stack(terms).mean(), model.table)[0]


@pytest.mark.parametrize("gamma", [0.5, 1.0, 3.0])
def test_fisher_ratio_mask_equals_hand_computation(gamma):
    model = BigramLM()
    forget = [bigram_view(1), bigram_view(2)]
    preserve = [bigram_view(3), bigram_view(4)]
    f_f = sum(hand_grad(model, b) ** 2 for b in forget) / 2
    f_p = sum(hand_grad(model, b) ** 2 for b in preserve) / 2
    expected = (f_f + 1e-15) / (f_p + 1e-15) >= gamma

    torch.testing.assert_close(fisher_diagonal(model, forget, ["table"])["table"], f_f)
    sal = compute_saliency_masks(
        model, lambda m: {"language": ["table"]}, forget, preserve, gamma=gamma, groups=("language",)
    )
    assert torch.equal(sal.masks["table"], expected)
    assert 0 < expected.float().mean() < 1
    assert model.table.grad is None and model.training


# ---- masked forget update, full fine-tuning -------------------------------------------------------
def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_only_masked_in_moved(model: nn.Module, before: dict[str, Tensor], masks: dict[str, Tensor]) -> int:
    """Masked-out entries and parameters outside the mask bit-identical; returns #moved masked-in entries."""
    moved = 0
    for n, p in model.named_parameters():
        if n in masks:
            m = masks[n]
            assert torch.equal(p.detach()[~m], before[n][~m]), f"masked-out entries of {n} moved"
            moved += int((p.detach()[m] != before[n][m]).sum())
        else:
            assert torch.equal(p.detach(), before[n]), f"{n} is outside the mask but moved"
    return moved


@pytest.mark.parametrize(("group", "restore"), [("vision", True), ("vision", False), ("both", True)])
def test_mmunlearner_forget_step_touches_only_masked_entries(group, restore):
    model = tiny_llava()
    sal = llava_masks(model)
    frac = sal.selected_fraction()
    assert 0 < frac["vision"] < 1 and 0 < frac["language"] < 1
    method = get_method("mmunlearner", {"mask": group, "restore_masked_out": restore})
    method.set_mask(sal)
    masks = sal.select(group)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    retain = llava_batch(2)
    for _ in range(3):  # prior momentum in the trainer's AdamW, on every parameter
        method.retain_step(model, opt, retain, max_grad_norm=1.0)
    assert all(s["exp_avg"].abs().sum() > 0 for s in opt.state.values())
    opt_state = copy.deepcopy(opt.state_dict())

    for i in range(2):  # the second step also has momentum in the masked optimizer
        before = snapshot(model)
        stats = method.forget_step(model, opt, llava_batch(10 + i))
        assert stats["forget_nll"] > 0
        assert assert_only_masked_in_moved(model, before, masks) > 0
    new_state = opt.state_dict()
    for k, s in opt_state["state"].items():  # the trainer's optimizer was not touched
        assert torch.equal(s["exp_avg"], new_state["state"][k]["exp_avg"])
    assert all(p.grad is None for p in model.parameters())


def test_shared_optimizer_would_leak_through_momentum():
    """The reference's defect, reproduced: masking the gradient but stepping the shared AdamW that
    has momentum moves masked-out entries. (So the test above really detects a leak.)"""
    model = tiny_llava()
    masks = llava_masks(model).select("vision")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    method = get_method("mmunlearner", {"mask": "vision"})
    for _ in range(2):
        method.retain_step(model, opt, llava_batch(2), max_grad_norm=1.0)
    before = snapshot(model)
    (-nll(model, llava_batch(10))).backward()
    for n, p in model.named_parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)  # a zero gradient: AdamW still applies its momentum
        if n in masks:
            p.grad.masked_fill_(~masks[n], 0.0)
        else:
            p.grad.zero_()
    opt.step()
    with pytest.raises(AssertionError, match="masked-out entries of .* moved"):
        assert_only_masked_in_moved(model, before, masks)


def test_mmunlearner_schedule_every_k():
    model = tiny_llava()
    method = get_method("mmunlearner", {"mask": "language", "forget_every": 2})
    assert method.custom_step and method.needs_retain
    method.set_mask(llava_masks(model))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    flags = []
    for step in range(4):
        stats = method.train_step(model, opt, llava_batch(1), llava_batch(2), None, step, max_grad_norm=1.0)
        flags.append(stats["forget_step"])
        assert "retain_nll" in stats
    assert flags == [1.0, 0.0, 1.0, 0.0]
    assert method.state_dict()["masked_optimizer"]["state"]
    with pytest.raises(ValueError, match="retain"):
        method.train_step(model, opt, llava_batch(1), None, None, 0, max_grad_norm=1.0)


def test_mmunlearner_without_mask_is_an_error():
    model = tiny_llava()
    with pytest.raises(ValueError, match="mask_path"):
        get_method("mmunlearner").forget_step(model, None, llava_batch(1))


def test_pubg_with_mask_touches_only_masked_entries():
    model = tiny_llava()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sal = llava_masks(model)
    method = get_method("pubg", {"mask": "vision", "teacher_cache": False, "w_ga": 0.5, "w_ret": 0})
    assert method.custom_step
    method.set_mask(sal)
    guide = llava_batch(5, prefix="guide_")
    teacher = {k.replace("guide_", "teacher_"): v for k, v in guide.items() if k.startswith("guide_")}
    batch = {**llava_batch(6), **guide, **teacher}
    batch["pixel_values"] = guide["pixel_values"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(2):
        before = snapshot(model)
        stats = method.train_step(model, opt, batch, None, ref, step, max_grad_norm=1.0)
        assert stats["bg_kl"] > 0
        assert assert_only_masked_in_moved(model, before, sal.select("vision")) > 0


# ---- PEFT LoRA --------------------------------------------------------------------------------------
def lora_llava() -> nn.Module:
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(tiny_llava(), cfg)


def test_lora_mask_keys_are_peft_names_and_restrict_the_update(tmp_path):
    model = lora_llava()
    groups = resolve_groups(model, llava_groups)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups["vision"]) | set(groups["language"]) == trainable
    assert all("vision_tower" in n for n in groups["vision"])

    sal = llava_masks(model)
    assert set(sal.masks) == trainable
    assert all(".lora_A." in k or ".lora_B." in k for k in sal.masks)
    assert all(k.startswith("base_model.model.") for k in sal.masks)
    path = sal.save(tmp_path / "mask.safetensors")

    method = get_method("mmunlearner", {"mask": "both", "mask_path": str(path)})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    method.retain_step(model, opt, llava_batch(2), max_grad_norm=1.0)
    for i in range(2):
        before = snapshot(model)
        method.forget_step(model, opt, llava_batch(10 + i))
        assert assert_only_masked_in_moved(model, before, sal.select("both")) > 0


def test_mask_from_base_model_does_not_fit_lora_model():
    """The reference's defect 1: base-model names never match PEFT names. Ours refuses the mask."""
    base_mask = llava_masks(tiny_llava()).select("both")
    model = lora_llava()
    with pytest.raises(ValueError, match="not parameter names of the model"):
        check_mask_matches(model, base_mask)
    method = get_method("mmunlearner")
    method.set_mask(base_mask)
    with pytest.raises(ValueError, match="not parameter names"):
        method.forget_step(model, None, llava_batch(1))


# ---- mask files --------------------------------------------------------------------------------------
def test_mask_save_load_roundtrip(tmp_path):
    model = tiny_llava()
    sal = llava_masks(model, gamma=1.5)
    path = sal.save(tmp_path / "sub" / "mask.safetensors")
    loaded = SaliencyMask.load(path)
    assert loaded.gamma == 1.5 and loaded.groups == sal.groups
    assert set(loaded.masks) == set(sal.masks)
    assert all(torch.equal(loaded.masks[k], sal.masks[k]) for k in sal.masks)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sparsity = json.loads(meta["sparsity"])
    assert set(sparsity) == {"vision", "language", "both"}
    assert sparsity["vision"] == pytest.approx(1 - sal.selected_fraction()["vision"])
    both = loaded.select("both")
    assert set(both) == set(loaded.select("vision")) | set(loaded.select("language"))
    check_mask_matches(model, both)
    with pytest.raises(ValueError, match="unknown mask group"):
        loaded.select("eyes")
    only_lang = SaliencyMask(masks=loaded.select("language"), groups={"language": loaded.groups["language"]})
    with pytest.raises(ValueError, match="has no parameters"):
        only_lang.select("vision")
    with pytest.raises(FileNotFoundError):
        SaliencyMask.load(tmp_path / "missing.safetensors")


def test_checkpoint_keeps_the_masked_optimizer_so_a_resumed_run_matches(tmp_path):
    """A checkpoint holds MMUnlearner's masked AdamW: resuming and continuing gives exactly the same
    weights as never stopping (a fresh masked optimizer, without momentum, would not)."""
    from unlearn_core.training.loop import load_checkpoint, load_method_state, save_checkpoint

    def build():
        model = tiny_llava()
        method = get_method("mmunlearner", {"mask": "both", "forget_every": 1})
        method.set_mask(llava_masks(model))
        return model, method, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step(model, method, opt, i):
        method.train_step(model, opt, llava_batch(10 + i), llava_batch(20 + i), None, i, max_grad_norm=1.0)

    model, method, opt = build()
    for i in range(2):
        step(model, method, opt, i)
    save_checkpoint(tmp_path, model, opt, 2, method_state=method.state_dict())
    assert (tmp_path / "method.pt").is_file()
    step(model, method, opt, 2)

    resumed, method2, opt2 = build()
    assert load_checkpoint(tmp_path, resumed, opt2) == 2
    method2.load_state_dict(load_method_state(tmp_path))
    step(resumed, method2, opt2, 2)
    for (n, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), n

    fresh, method3, opt3 = build()  # same checkpoint, masked optimizer state dropped
    load_checkpoint(tmp_path, fresh, opt3)
    step(fresh, method3, opt3, 2)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
