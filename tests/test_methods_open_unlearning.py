"""RMU, IdkDPO, UNDIAL, WGA, SatImp and CE-U: values and gradients against hand computations of the
reference formulas (explicit loops over answer positions, closed-form logit gradients), RMU's layer
hook and trainable-parameter contract on a tiny LLaVA (full fine-tuning and LoRA), forgetting on
real tiny models, and one 2-worker DDP run of all six."""

from __future__ import annotations

import copy
import itertools
import math
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast

from tests.ray_head import free_ports
from tests.test_methods import BigramLM, make_view, ref_nll, ref_token_logps
from tests.test_saliency import IMAGE_TOKEN, llava_batch
from unlearn_core.config import ConfigError, RunConfig, TrainConfig
from unlearn_core.methods import get_method
from unlearn_core.methods.base import nll
from unlearn_core.training.steps import make_step
from unlearn_core.training.worker import BuiltModel, apply_method_needs, ddp_kwargs, trainable_model

V = 11
NEW = ("rmu", "idk_dpo", "undial", "wga", "satimp", "ceu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one torch thread (two oversubscribe a loaded 2-core machine many times over)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FixedLogits(nn.Module):
    """A "model" whose logits are its parameter, so ``z.grad`` after ``backward`` is dL/dz itself and
    can be compared with the closed-form gradient of each loss on the logits."""

    def __init__(self, labels: Tensor, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.z = nn.Parameter(torch.randn(*labels.shape, V, generator=g))

    def forward(self, input_ids: Tensor, **_: object) -> CausalLMOutputWithPast:
        return CausalLMOutputWithPast(logits=self.z)


def answer_positions(labels: Tensor) -> list[tuple[int, int, int, int]]:
    """(row, position of the logits, target token, index within the answer) of every answer token."""
    out = []
    for b in range(labels.shape[0]):
        k = 0
        for t in range(1, labels.shape[1]):
            if labels[b, t] != -100:
                out.append((b, t - 1, int(labels[b, t]), k))
                k += 1
    return out


def onehot(y: int) -> Tensor:
    e = torch.zeros(V)
    e[y] = 1.0
    return e


@pytest.fixture()
def view() -> dict[str, Tensor]:
    return make_view(1, [3, 4, 2], [3, 2, 4])


# ---- WGA and SatImp: detached token weights -------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "weight"),
    [
        ("wga", {"beta": 0.7, "gamma": 1.3}, lambda p: p**0.7),
        ("satimp", {"beta1": 2.5, "beta2": 1.5, "gamma": 0.8}, lambda p: p**2.5 * (1 - p) ** 1.5),
    ],
)
def test_weighted_ascent_value_and_logit_gradient_by_hand(view, name, params, weight):
    """L = -gamma * mean_t w(p_t) * (-log p_t), w detached: dL/dz_t = -gamma/N * w(p_t) * (softmax(z_t) - e_y)."""
    model = FixedLogits(view["labels"], seed=0)
    loss, stats = get_method(name, {**params, "alpha": 0}).loss(model, view, None, None)
    loss.backward()
    z, gamma = model.z.detach(), params["gamma"]
    pos = answer_positions(view["labels"])
    value, grad = 0.0, torch.zeros_like(z)
    for b, s, y, _ in pos:
        p = torch.softmax(z[b, s], -1)
        w = float(weight(p[y]))
        value += -gamma * w * -math.log(float(p[y])) / len(pos)
        grad[b, s] = -gamma * w * (p - onehot(y)) / len(pos)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-5)
    torch.testing.assert_close(model.z.grad, grad)
    # not vacuous: the weights shape the gradient (undetached weights would give another one)
    plain = torch.zeros_like(z)
    for b, s, y, _ in pos:
        plain[b, s] = -gamma * (torch.softmax(z[b, s], -1) - onehot(y)) / len(pos)
    assert not torch.allclose(grad, plain, atol=1e-4)


@pytest.mark.parametrize("name", ["wga", "satimp", "undial", "ceu", "idk_dpo"])
def test_retain_term_is_alpha_times_retain_nll(view, name):
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    batch = {**view, **make_view(7, [3, 4, 2], [2, 2, 2], prefix="idk_")}
    retain = make_view(2, [2, 3], [4, 3])
    base, _ = get_method(name, {"alpha": 0}).loss(model, batch, None, ref)
    m = get_method(name, {"alpha": 0.6})
    assert m.needs_retain and not get_method(name, {"alpha": 0}).needs_retain
    loss, stats = m.loss(model, batch, retain, ref)
    torch.testing.assert_close(loss, base + 0.6 * ref_nll(model, retain))
    assert stats["retain_nll"] == pytest.approx(float(ref_nll(model, retain)))


# ---- UNDIAL: the teacher's adjusted logits ---------------------------------------------------------
def test_undial_value_and_logit_gradient_by_hand(view):
    """q_t = softmax(z_ref,t - beta e_y); L = gamma * mean_t CE(q_t, softmax(z_t)); dL/dz_t = gamma/N (softmax(z_t) - q_t)."""
    model, ref = FixedLogits(view["labels"], seed=0), FixedLogits(view["labels"], seed=1)
    beta, gamma = 3.0, 1.5
    m = get_method("undial", {"beta": beta, "gamma": gamma, "alpha": 0})
    assert m.needs_ref and not m.needs_retain
    loss, _ = m.loss(model, view, None, ref)
    loss.backward()
    z, zr = model.z.detach(), ref.z.detach()
    pos = answer_positions(view["labels"])
    value, grad = 0.0, torch.zeros_like(z)
    for b, s, y, _ in pos:
        adjusted = zr[b, s].clone()
        adjusted[y] -= beta
        q = torch.exp(adjusted) / torch.exp(adjusted).sum()
        logp = torch.log_softmax(z[b, s], -1)
        value += gamma * float(-(q * logp).sum()) / len(pos)
        grad[b, s] = gamma * (torch.softmax(z[b, s], -1) - q) / len(pos)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-5)
    torch.testing.assert_close(model.z.grad, grad)
    assert ref.z.grad is None  # the teacher is not trained
    # the adjustment lowers exactly the target token's teacher probability
    b, s, y, _ = pos[0]
    q_beta0 = torch.softmax(zr[b, s], -1)
    adjusted = zr[b, s].clone()
    adjusted[y] -= beta
    q = torch.softmax(adjusted, -1)
    assert q[y] < q_beta0[y] and all(q[v] > q_beta0[v] for v in range(V) if v != y)


# ---- CE-U: the model's own distribution without the true token ------------------------------------
@pytest.mark.parametrize("skip", [0, 1, 2])
def test_ceu_value_and_logit_gradient_by_hand(view, skip):
    """q_t = the model's detached distribution renormalised without y_t; L = mean_t CE(q_t, softmax(z_t))
    over answer tokens past the first ``skip`` of each answer; dL/dz_t = (softmax(z_t) - q_t)/N."""
    model = FixedLogits(view["labels"], seed=0)
    loss, _ = get_method("ceu", {"ignore_first_n_answer_tokens": skip}).loss(model, view, None, None)
    loss.backward()
    z = model.z.detach()
    pos = [x for x in answer_positions(view["labels"]) if x[3] >= skip]
    value, grad = 0.0, torch.zeros_like(z)
    for b, s, y, _ in pos:
        e = torch.exp(z[b, s])
        e[y] = 0.0
        q = e / e.sum()
        logp = torch.log_softmax(z[b, s], -1)
        value += float(-sum(q[v] * logp[v] for v in range(V) if v != y)) / len(pos)
        grad[b, s] = (torch.softmax(z[b, s], -1) - q) / len(pos)
    assert float(loss.detach()) == pytest.approx(value, rel=1e-5)
    torch.testing.assert_close(model.z.grad, grad)
    # the true token's probability is pushed down: its logit gradient is positive (L decreases as z_y falls)
    assert all(float(grad[b, s, y]) > 0 for b, s, y, _ in pos)


def test_ceu_without_any_kept_token_is_zero_with_a_graph():
    view = make_view(1, [3, 4], [1, 1])
    model = FixedLogits(view["labels"], seed=0)
    loss, _ = get_method("ceu", {"ignore_first_n_answer_tokens": 1}).loss(model, view, None, None)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(model.z.grad.abs().sum()) == 0.0


# ---- IdkDPO: refusal preferred over the true answer, against the frozen model ----------------------
def test_idk_dpo_matches_the_dpo_formula_on_both_views(view):
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    batch = {**view, **make_view(7, [3, 4, 2], [2, 3, 2], prefix="idk_")}
    beta, gamma = 0.4, 1.2
    m = get_method("idk_dpo", {"beta": beta, "gamma": gamma, "alpha": 0})
    assert m.views == ("", "idk_") and m.needs_ref and not m.needs_retain
    assert [v.prefix for v in m.shard_views] == ["idk_"]
    assert m.shard_views[0].answers is get_method("reject").shard_views[0].answers  # reject's idk_ view
    loss, stats = m.loss(model, batch, None, ref)

    def seq(mdl: nn.Module, prefix: str) -> Tensor:
        return torch.stack([torch.stack(r).sum() for r in ref_token_logps(mdl, batch, prefix)])

    with torch.no_grad():
        lw_ref, ll_ref = seq(ref, "idk_"), seq(ref, "")
    margin = (seq(model, "idk_") - lw_ref) - (seq(model, "") - ll_ref)
    terms = [math.log(1 / (1 + math.exp(-beta * float(d)))) for d in margin]
    expected = -(2 / beta) * sum(terms) / len(terms) * gamma
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # gradient: dL/dmargin_b = -(2/beta) * beta * sigmoid(-beta * margin_b) / B, through both views
    loss.backward()
    got = model.table.grad.clone()
    model.table.grad = None
    weights = [2 * gamma / (1 + math.exp(beta * float(d))) / len(terms) for d in margin]
    (-sum(w * d for w, d in zip(weights, margin, strict=True))).backward()
    torch.testing.assert_close(got, model.table.grad)
    # at theta = ref the loss is (2/beta) log 2 and the refusal is pulled up, the true answer down
    same, _ = get_method("idk_dpo", {"beta": beta, "alpha": 0}).loss(model, batch, None, copy.deepcopy(model))
    assert float(same) == pytest.approx(2 / beta * math.log(2), rel=1e-6)


# ---- RMU on a tiny LLaVA with three decoder layers ---------------------------------------------------
def tiny_llava(seed: int = 0, text_layers: int = 3) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=text_layers,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        ),
        image_token_index=IMAGE_TOKEN,
        vision_feature_layer=-1,
    )  # fmt: skip
    return LlavaForConditionalGeneration(cfg)


def hand_direction(dim: int, seed: int) -> Tensor:
    """WMDP / open-unlearning: torch.rand(dim) / its norm (here from a seeded generator)."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / torch.sqrt((u * u).sum())


def hidden_after(model: nn.Module, layer: int, batch: dict[str, Tensor]) -> Tensor:
    """Decoder layer ``layer``'s output read from ``output_hidden_states`` (not through a hook)."""
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in batch}
    return model(**kw, output_hidden_states=True).hidden_states[layer + 1]


def hand_act_mse(h: Tensor, target: Tensor, labels: Tensor) -> Tensor:
    rows = []
    for b in range(labels.shape[0]):
        pos = [t - 1 for t in range(1, labels.shape[1]) if labels[b, t] != -100]
        rows.append(sum(((h[b, s] - target[b, s]) ** 2).mean() for s in pos) / len(pos))
    return torch.stack(rows).mean()


def test_rmu_steering_value_and_activation_gradient_by_hand():
    """L_f = mean_b 1/|A_b| sum_{t in A_b} mean_d (h_bt - c u)^2 at the answer positions of layer L's
    output; dL/dh_bt = 2 (h_bt - c u) / (d |A_b| B) there and 0 at every other position."""
    model, layer, c = tiny_llava(), 1, 5.0
    forget = llava_batch(1, B=3)
    m = get_method("rmu", {"layer": layer, "steering_coeff": c, "alpha": 0})
    assert m.layer_hooks()[0].index == layer and not m.reads_logits and m.views == ("",)
    grads = []
    block = model.model.language_model.layers[layer]

    def keep_grad(_module: nn.Module, _inputs: object, out: Tensor) -> None:
        out.register_hook(grads.append)

    handle = block.register_forward_hook(keep_grad)
    loss, stats = m.loss(model, forget, None, None)
    loss.backward()
    handle.remove()
    with torch.no_grad():
        h = hidden_after(model, layer, forget)
    d = h.shape[-1]
    target = (c * hand_direction(d, 0)).expand_as(h)
    assert float(loss.detach()) == pytest.approx(float(hand_act_mse(h, target, forget["labels"])), rel=1e-5)
    expected = torch.zeros_like(h)
    labels, B = forget["labels"], h.shape[0]
    for b in range(B):
        pos = [t - 1 for t in range(1, labels.shape[1]) if labels[b, t] != -100]
        for s in pos:
            expected[b, s] = 2 * (h[b, s] - c * hand_direction(d, 0)) / (d * len(pos) * B)
    torch.testing.assert_close(grads[0], expected)
    assert stats["forget_steer_mse"] == pytest.approx(float(loss.detach()))
    # the direction is fixed by its seed (every DDP worker steers the same way), another seed differs
    from unlearn_core.methods.rmu import steering_direction

    torch.testing.assert_close(steering_direction(d, 0), hand_direction(d, 0))
    assert not torch.allclose(steering_direction(d, 1), steering_direction(d, 0))


def test_rmu_retain_term_matches_the_frozen_models_activations():
    model, ref, layer = tiny_llava(seed=0), tiny_llava(seed=4), 0  # (the last layer's hidden state is normed)
    forget, retain = llava_batch(1), llava_batch(2, B=3, text_only=True)
    m = get_method("rmu", {"layer": layer, "steering_coeff": 3.0, "alpha": 2.5})
    assert m.needs_ref and m.needs_retain
    loss, stats = m.loss(model, forget, retain, ref)
    with torch.no_grad():
        h_f, h_r, h_ref = (
            hidden_after(x, layer, b) for x, b in ((model, forget), (model, retain), (ref, retain))
        )
    u = 3.0 * hand_direction(h_f.shape[-1], 0)
    expected = hand_act_mse(h_f, u.expand_as(h_f), forget["labels"]) + 2.5 * hand_act_mse(
        h_r, h_ref, retain["labels"]
    )
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert stats["retain_act_mse"] > 0
    _, same = m.loss(model, forget, retain, copy.deepcopy(model))
    assert same["retain_act_mse"] == pytest.approx(0.0, abs=1e-10)


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_rmu_trains_only_its_layers_in_full_fine_tuning_and_lora():
    full = tiny_llava()
    apply_method_needs(full, get_method("rmu", {"layer": 1}))
    assert trainable(full) == {
        n for n, _ in full.named_parameters() if re.match(r"model\.language_model\.layers\.[01]\.", n)
    }
    lora = get_peft_model(tiny_llava(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    apply_method_needs(lora, get_method("rmu", {"layer": 2}))
    names = trainable(lora)
    assert names and all(".lora_" in n and re.search(r"language_model\.layers\.[012]\.", n) for n in names)
    assert len(names) == 3 * 2 * 2  # layers 0-2 x (q, v) x (A, B)
    own = tiny_llava()
    apply_method_needs(own, get_method("rmu", {"layer": 2, "trainable": r"layers\.2\.mlp\.down_proj"}))
    assert trainable(own) == {"model.language_model.layers.2.mlp.down_proj.weight"}


def test_rmu_refuses_a_missing_layer_and_parameters_after_it():
    with pytest.raises(ConfigError, match=r"method\.params\.layer=3: .* 3 decoder layers \(valid: 0\.\.2\)"):
        apply_method_needs(tiny_llava(), get_method("rmu", {"layer": 3}))
    with pytest.raises(ConfigError, match=r"no gradient: \['model\.language_model\.layers\.2\."):
        apply_method_needs(tiny_llava(), get_method("rmu", {"layer": 1, "trainable": r"language_model"}))
    with pytest.raises(ConfigError, match=r"lm_head"):
        apply_method_needs(tiny_llava(), get_method("rmu", {"layer": 2, "trainable": r"layers\.2\.|lm_head"}))
    with pytest.raises(ConfigError, match="no trainable parameter matches"):
        apply_method_needs(tiny_llava(), get_method("rmu", {"trainable": "nothing_has_this_name"}))
    with pytest.raises(ConfigError, match=r"method\.params\.trainable"):
        get_method("rmu", {"trainable": "(unclosed"})
    # a method without hooks or a trainable regex leaves the model as the set-up made it
    model = tiny_llava()
    apply_method_needs(model, get_method("wga"))
    assert trainable(model) == {n for n, _ in model.named_parameters()}


def test_rmu_steers_the_layer_and_keeps_retain_and_frozen_weights():
    model = tiny_llava()
    method = get_method("rmu", {"layer": 1, "steering_coeff": 4.0, "alpha": 1.0})
    apply_method_needs(model, method)
    ref = copy.deepcopy(model).eval()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    forget, retain = llava_batch(1, B=4), llava_batch(2, B=4)
    stats = [method.train_step(model, opt, forget, retain, ref, i, max_grad_norm=1.0) for i in range(30)]
    assert stats[-1]["forget_steer_mse"] < 0.2 * stats[0]["forget_steer_mse"], stats[::10]
    assert stats[-1]["retain_act_mse"] < 0.1 * stats[0]["forget_steer_mse"], stats[::10]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_rmu_grad_accum_4_equals_a_4x_batch():
    method = get_method("rmu", {"layer": 1, "alpha": 0.5})
    micro = [llava_batch(10 + i) for i in range(4)]
    retains = [llava_batch(20 + i, text_only=True) for i in range(4)]
    big = {k: torch.cat([b[k] for b in micro]) for k in micro[0]}
    big_r = {k: torch.cat([b[k] for b in retains]) for k in retains[0]}
    out = []
    for accum, fs, rs in ((4, micro, retains), (1, [big], [big_r])):
        model = tiny_llava()
        apply_method_needs(model, method)
        ref = copy.deepcopy(model)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        tc = TrainConfig(steps=1, grad_accum=accum, max_grad_norm=1e6)
        make_step(method, ref, model, opt, {"forget": iter(fs), "retain": iter(rs)}, tc)(0)
        out.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert all(torch.allclose(out[0][n], out[1][n], atol=1e-6, rtol=1e-5) for n in out[0])
    assert not all(torch.equal(out[0][n], p) for n, p in tiny_llava().named_parameters() if n in out[0])


# ---- forgetting happens: the five logit objectives on a tiny LLaVA, LoRA and full ---------------------
def forget_nll(model: nn.Module, batch: dict[str, Tensor]) -> float:
    with torch.no_grad():
        return float(nll(model, batch))


def forget_rows() -> dict[str, Tensor]:
    forget = {**llava_batch(5, B=4, prefix="idk_"), **llava_batch(1, B=4)}  # the plain view's pixels
    return forget


@pytest.fixture(scope="module")
def learned() -> nn.Module:
    """A tiny LLaVA that has learned the forget rows' answers (something to forget)."""
    model, forget = tiny_llava(text_layers=1), forget_rows()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        nll(model, forget).backward()
        opt.step()
    assert forget_nll(model, forget) < 0.5
    return model


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("name", ["idk_dpo", "undial", "wga", "satimp", "ceu"])
def test_logit_methods_forget_in_full_fine_tuning_and_lora(learned, name, lora):
    model = copy.deepcopy(learned)
    if lora:
        torch.manual_seed(0)
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
        )
    forget = forget_rows()
    method = get_method(name, {"alpha": 0})
    ref = copy.deepcopy(model).eval() if method.needs_ref else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 3e-2 if lora else 1e-2  # LoRA's factors start at B = 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    start = forget_nll(model, forget)
    for i in range(10):
        method.train_step(model, opt, forget, None, ref, i, max_grad_norm=1.0)
    assert forget_nll(model, forget) > start + 1.0, (start, forget_nll(model, forget))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable(model)


# ---- one 2-worker DDP run of all six -------------------------------------------------------------------
def _ddp_all_methods(rank: int, port: int, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        for name in NEW:
            method = get_method(name, {"alpha": 0.5})
            model = trainable_model(
                tiny_llava(seed=0), RunConfig()
            )  # full fine-tuning, as a worker sets it up
            apply_method_needs(model, method)
            ref = copy.deepcopy(model).eval() if method.needs_ref else None
            built = BuiltModel(
                model=model, processor=None, cfg=RunConfig(), streams={}, method=method, ref=ref
            )
            ddp = DistributedDataParallel(model, **ddp_kwargs(built))
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            forget = {**llava_batch(40 + rank, prefix="idk_"), **llava_batch(10 + rank)}  # rank's own rows
            retain = llava_batch(20 + rank, text_only=rank == 1)
            batches = {"forget": itertools.repeat(forget), "retain": itertools.repeat(retain)}
            step = make_step(method, ref, ddp, opt, batches, TrainConfig(steps=2))
            for i in range(2):
                step(i)
            out[(rank, name)] = {n: p.detach().clone() for n, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_worker_ddp_runs_each_new_method_in_sync():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_all_methods, args=(free_ports(1)[0], out), nprocs=2, join=True)
        results = dict(out)
    before = dict(tiny_llava(seed=0).named_parameters())
    for name in NEW:
        w0, w1 = results[(0, name)], results[(1, name)]
        assert all(torch.equal(w0[n], w1[n]) for n in w0), name  # the ranks stayed in sync
        moved = {n for n in w0 if not torch.equal(w0[n], before[n])}
        assert moved, name
        if name == "rmu":  # only its layers moved (default layer 1: decoder layers 0 and 1)
            assert all(re.match(r"model\.language_model\.layers\.[01]\.", n) for n in moved), sorted(moved)
