"""Relearning-resistant forget updates (unlearn_core/methods/robust.py): SAM, randomised smoothing and
the tamper-resistance term, checked against references written out by hand from their formulas
(closed-form bigram gradients, Adam's update written out), and for what they must do on a tiny VLM:
the weights come back exactly, the perturbed gradient is the gradient at the perturbed weights,
masks and DDP keep working, the options are declared by the contract (no method names)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from tests.ray_head import free_ports
from tests.test_methods import BigramLM, make_view
from tests.test_saliency import assert_only_masked_in_moved, llava_batch, llava_masks, snapshot, tiny_llava
from unlearn_core.config import ConfigError, RunConfig, TrainConfig, with_overrides
from unlearn_core.method_params import ForgetRobustness
from unlearn_core.methods import METHODS, get_method
from unlearn_core.methods.base import UnlearnMethod
from unlearn_core.methods.robust import Robustness, noise_generator, split_rows
from unlearn_core.training.steps import make_step
from unlearn_core.training.worker import BuiltModel, check_supported, ddp_kwargs

BIG = 1e9  # a clip no gradient reaches: the step is exactly lr * gradient


# ---- hand references on the bigram model: logits[t] = table[input_ids[t]] -----------------------------
def pairs(view: dict[str, Tensor]) -> list[list[tuple[int, int]]]:
    """Per row, the (previous token, answer token) pairs of its answer positions."""
    ids, labels = view["input_ids"], view["labels"]
    return [
        [(int(ids[b, t - 1]), int(labels[b, t])) for t in range(1, labels.shape[1]) if labels[b, t] != -100]
        for b in range(labels.shape[0])
    ]


def softmax_row(table: Tensor, i: int) -> Tensor:
    row = table[i].double()
    e = torch.exp(row - row.max())
    return e / e.sum()


def hand_logp(table: Tensor, view: dict[str, Tensor]) -> list[float]:
    """log p(y_b | x_b) of every row: the sum of its answer tokens' log-softmax."""
    return [sum(math.log(float(softmax_row(table, x)[y])) for x, y in row) for row in pairs(view)]


def hand_nll_grad(table: Tensor, view: dict[str, Tensor]) -> Tensor:
    """d mean-token NLL / d table: (softmax(table[x]) - onehot(y)) / N at row x, for every answer token."""
    grad = torch.zeros_like(table, dtype=torch.float64)
    toks = [p for row in pairs(view) for p in row]
    for x, y in toks:
        g = softmax_row(table, x).clone()
        g[y] -= 1.0
        grad[x] += g / len(toks)
    return grad


def hand_npo_grad(table: Tensor, ref: Tensor, view: dict[str, Tensor], beta: float) -> Tensor:
    """NPO: L = -(2/beta) mean_b log sigmoid(-beta (lp_b - lp_ref_b)); dL/dlp_b = (2/B) sigmoid(beta d_b),
    d lp_b / d table[x] = onehot(y) - softmax(table[x])."""
    lp, lp_ref = hand_logp(table, view), hand_logp(ref, view)
    rows = pairs(view)
    grad = torch.zeros_like(table, dtype=torch.float64)
    for b, row in enumerate(rows):
        w = 2.0 / len(rows) / (1.0 + math.exp(-beta * (lp[b] - lp_ref[b])))
        for x, y in row:
            g = -softmax_row(table, x).clone()
            g[y] += 1.0
            grad[x] += w * g
    return grad


def norm(t: Tensor) -> float:
    return float(t.double().pow(2).sum().sqrt())


def hand_attack(theta: Tensor, attack: dict[str, Tensor], steps: int, lr: float) -> list[Tensor]:
    """theta_1..theta_K: K Adam steps (beta1 0.9, beta2 0.999, eps 1e-8, no decay) on the NLL of ``attack``."""
    m = torch.zeros_like(theta, dtype=torch.float64)
    v = torch.zeros_like(theta, dtype=torch.float64)
    th = theta.double().clone()
    out = []
    for k in range(1, steps + 1):
        g = hand_nll_grad(th, attack)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9**k), v / (1 - 0.999**k)
        th = th - lr * m_hat / (v_hat.sqrt() + 1e-8)
        out.append(th.clone())
    return out


def rows(view: dict[str, Tensor], sl: slice) -> dict[str, Tensor]:
    return {k: v[sl] for k, v in view.items()}


@pytest.fixture()
def forget() -> dict[str, Tensor]:
    return make_view(1, [3, 4, 2, 3], [3, 2, 4, 3])


@pytest.fixture()
def retain() -> dict[str, Tensor]:
    return make_view(2, [2, 3], [4, 3])


def one_step(method: UnlearnMethod, model, forget, retain, ref, step: int = 0) -> dict[str, float]:
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return method.train_step(model, opt, forget, retain, ref, step, max_grad_norm=BIG)


# ---- reference checks -------------------------------------------------------------------------------
def test_npo_with_sam_matches_the_hand_formula(forget, retain):
    """theta' = theta - lr * (g_f(theta + eps) + alpha * g_r(theta)), eps = rho g_f(theta) / ||g_f(theta)||."""
    beta, alpha, rho = 0.3, 0.5, 0.4
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    theta, t_ref = model.table.detach().clone(), ref.table.detach()
    g0 = hand_npo_grad(theta, t_ref, forget, beta)
    eps = rho * g0 / norm(g0)
    g_sam = hand_npo_grad(theta + eps, t_ref, forget, beta)
    expected = theta.double() - (g_sam + alpha * hand_nll_grad(theta, retain))
    method = get_method("npo", {"beta": beta, "alpha": alpha, "sam_rho": rho})
    assert method.custom_step
    stats = one_step(method, model, forget, retain, ref)
    torch.testing.assert_close(model.table.detach().double(), expected, atol=2e-5, rtol=1e-5)
    assert stats["sam_grad_norm"] == pytest.approx(norm(g0), rel=1e-5)
    assert not torch.allclose(g_sam, g0, atol=1e-4)  # the perturbation changed the gradient


def test_randomised_smoothing_matches_the_hand_formula(forget, retain):
    """g_f = (1/n) sum_i g_f(theta + sigma z_i), z_i the documented per-step draws; retain plain."""
    beta, sigma, n, step = 0.2, 0.05, 3, 7
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    theta, t_ref = model.table.detach().clone(), ref.table.detach()
    gen = noise_generator(step, theta.device)
    draws = [torch.randn(theta.shape, generator=gen) for _ in range(n)]
    g = sum(hand_npo_grad(theta + sigma * z, t_ref, forget, beta) for z in draws) / n
    expected = theta.double() - (g + hand_nll_grad(theta, retain))
    method = get_method("npo", {"beta": beta, "rs_sigma": sigma, "rs_samples": n})
    one_step(method, model, forget, retain, ref, step=step)
    torch.testing.assert_close(model.table.detach().double(), expected, atol=2e-5, rtol=1e-5)
    # another step index draws other noise
    other = BigramLM(seed=0)
    one_step(method, other, forget, retain, ref, step=step + 1)
    assert not torch.allclose(other.table, model.table)


def test_tamper_resistance_matches_the_hand_formula(forget, retain):
    """Attack on rows A (first half): K Adam steps on NLL_A; TR gradient (w/K) sum_k g_f,B(theta_k) on
    rows B; update theta - lr * (g_f(theta) + TR + alpha g_r(theta)); the weights are theta again before it."""
    beta, alpha, k, lr_att, w = 0.3, 1.0, 2, 0.05, 0.7
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    theta, t_ref = model.table.detach().clone(), ref.table.detach()
    a, b = rows(forget, slice(0, 2)), rows(forget, slice(2, 4))
    attacked = hand_attack(theta, a, k, lr_att)
    tr = sum(hand_npo_grad(th, t_ref, b, beta) for th in attacked) * (w / k)
    expected = theta.double() - (
        hand_npo_grad(theta, t_ref, forget, beta) + tr + alpha * hand_nll_grad(theta, retain)
    )
    method = get_method(
        "npo", {"beta": beta, "alpha": alpha, "tar_steps": k, "tar_lr": lr_att, "tar_weight": w}
    )
    stats = one_step(method, model, forget, retain, ref)
    torch.testing.assert_close(model.table.detach().double(), expected, atol=2e-5, rtol=1e-5)
    assert stats["tar_heldout"] == 1.0
    # the attack really relearned A: its NLL fell between the first and the last simulated step
    nll_a0 = -sum(hand_logp(theta, a)) / sum(len(r) for r in pairs(a))
    assert stats["tar_attack_nll"] == pytest.approx(
        -sum(hand_logp(attacked[-2].float(), a)) / sum(len(r) for r in pairs(a)), rel=1e-4
    )
    assert stats["tar_attack_nll"] < nll_a0


def test_benign_tamper_resistance_attacks_the_retain_batch(forget, retain):
    """tar_attack=retain: K Adam steps on NLL_r (benign relearning), forget term on the whole forget batch."""
    beta, k, lr_att = 0.3, 2, 0.05
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    theta, t_ref = model.table.detach().clone(), ref.table.detach()
    attacked = hand_attack(theta, retain, k, lr_att)
    tr = sum(hand_npo_grad(th, t_ref, forget, beta) for th in attacked) / k
    expected = theta.double() - (hand_npo_grad(theta, t_ref, forget, beta) + tr)
    method = get_method(
        "npo", {"beta": beta, "alpha": 0.0, "tar_steps": k, "tar_lr": lr_att, "tar_attack": "retain"}
    )
    assert method.needs_retain  # alpha 0, but the simulated attack reads the retain batch
    one_step(method, model, forget, retain, ref)
    torch.testing.assert_close(model.table.detach().double(), expected, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="retain batch"):
        one_step(method, BigramLM(seed=0), forget, None, ref)


def test_split_rows_halves_every_per_row_tensor_or_refuses():
    batch = llava_batch(3, B=5)
    first, rest = split_rows(batch)
    assert first["input_ids"].shape[0] == 3 and rest["input_ids"].shape[0] == 2
    assert torch.equal(torch.cat([first["pixel_values"], rest["pixel_values"]]), batch["pixel_values"])
    assert split_rows(llava_batch(3, B=1)) is None
    mixed = {**llava_batch(3, B=4), "pixel_values": torch.zeros(3, 3, 16, 16)}  # a text-only row among them
    assert split_rows(mixed) is None


# ---- behaviour on a tiny VLM --------------------------------------------------------------------------
def grads_of(model, loss) -> dict[str, Tensor]:
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return {n: (g if g is not None else torch.zeros(())) for n, g in zip(names, gs, strict=True)}


def test_sam_gradient_is_the_gradient_at_the_perturbed_weights_and_the_weights_restore():
    model, ref = tiny_llava(seed=0), tiny_llava(seed=1)
    batch = llava_batch(4, B=3)
    method = get_method("npo", {"sam_rho": 0.5, "alpha": 0})
    before = snapshot(model)
    f_loss, stats = method.robust_forget_backward(model, batch, ref, step=0)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())  # bit-exact
    got = {n: (p.grad if p.grad is not None else torch.zeros(())) for n, p in model.named_parameters()}
    # independently: the plain gradient, eps = rho g / ||g||, the gradient of a copy moved by eps
    plain = grads_of(model, method.forget_loss(model, batch, ref)[0])
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in plain.values()))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(0.5 * plain[n] / total)
    at_eps = grads_of(moved, method.forget_loss(moved, batch, ref)[0])
    for n in got:
        torch.testing.assert_close(got[n].expand_as(at_eps[n]), at_eps[n], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(got[n], plain[n], atol=1e-6) for n in got)
    assert stats["sam_grad_norm"] == pytest.approx(total, rel=1e-5)
    assert stats["sam_forget_loss"] > f_loss  # the worst-case perturbation raises the forget loss


def test_tamper_resistance_restores_the_weights_and_reads_the_true_answers():
    method = get_method("reject", {"tar_steps": 2})
    assert method.views == ("", "idk_") and method.custom_step  # the attack needs the true answers
    assert get_method("reject").views == ("idk_",)
    model = tiny_llava(seed=0)
    batch = {
        **llava_batch(4, B=4),
        **{k: v for k, v in llava_batch(5, B=4, prefix="idk_").items() if "idk_" in k},
    }
    before = snapshot(model)
    _, stats = method.robust_forget_backward(model, batch, None, step=0)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert stats["tar_heldout"] == 1.0 and math.isfinite(stats["tar_forget_loss"])


def test_pubg_mask_with_sam_moves_only_masked_entries():
    model = tiny_llava()
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sal = llava_masks(model)
    method = get_method(
        "pubg",
        {"mask": "vision", "teacher_cache": False, "w_ga": 0.5, "w_ret": 0, "sam_rho": 0.2, "tar_steps": 1},
    )
    method.set_mask(sal)
    guide = llava_batch(5, prefix="guide_")
    teacher = {k.replace("guide_", "teacher_"): v for k, v in guide.items() if k.startswith("guide_")}
    batch = {**llava_batch(6), **guide, **teacher}
    batch["pixel_values"] = guide["pixel_values"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = snapshot(model)
    stats = method.train_step(model, opt, batch, None, ref, 0, max_grad_norm=1.0)
    assert "sam_forget_loss" in stats and "tar_forget_loss" in stats
    assert assert_only_masked_in_moved(model, before, sal.select("vision")) > 0


def test_npo_with_sam_forgets_on_a_tiny_vlm():
    """Behaviour: a few robust steps lower the forget rows' log-prob and keep the retain rows'."""
    model, ref = tiny_llava(seed=0), tiny_llava(seed=0)
    for p in ref.parameters():
        p.requires_grad_(False)
    f, r = llava_batch(4, B=4), llava_batch(8, B=4)
    method = get_method("npo", {"sam_rho": 0.05, "tar_steps": 1, "alpha": 1.0})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    from unlearn_core.methods.base import nll

    f0, r0 = float(nll(model, f)), float(nll(model, r))
    for step in range(8):
        method.train_step(model, opt, f, r, ref, step, max_grad_norm=1.0)
    assert float(nll(model, f)) > f0 + 0.5
    assert float(nll(model, r)) < r0 + 0.25


# ---- the contract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_with_the_options_splits_its_loss(name, forget, retain):
    cls = METHODS[name]
    if not issubclass(cls.Params, ForgetRobustness):
        assert Robustness.of(cls.Params()) is None
        return
    assert cls.forget_loss is not UnlearnMethod.forget_loss, (
        f"{name} takes the options but has no forget_loss"
    )
    plain = get_method(name)
    robust = get_method(name, {"sam_rho": 0.1})
    assert robust.custom_step and robust.robust_active and not plain.robust_active
    # loss = forget term + retain term, for every such method
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    batch = {**forget, **make_view(7, [3, 4, 2, 3], [2, 3, 2, 2], prefix="idk_")}
    batch.update(make_view(8, [3, 4, 2, 3], [2, 3, 2, 2], prefix="rand_"))
    if "guide_" in plain.views:
        return  # PUBG's views need a teacher; its split is checked by test_methods' PUBG references
    total, _ = plain.loss(model, batch, retain, ref)
    f_loss, _ = plain.forget_loss(model, batch, ref)
    r_loss, _ = plain.retain_loss(model, retain, ref)
    torch.testing.assert_close(total, f_loss + (r_loss if r_loss is not None else 0.0))


def test_sam_and_smoothing_are_alternatives_and_refusals_name_the_reason():
    with pytest.raises(ConfigError, match="sam_rho=0.1 and rs_sigma=0.01.*alternatives"):
        get_method("npo", {"sam_rho": 0.1, "rs_sigma": 0.01})
    with pytest.raises(ConfigError, match="method.params.tar_steps.*valid: >= 0, <= 16"):
        get_method("npo", {"tar_steps": 17})
    cfg = with_overrides(RunConfig(), {"method.name": "npo", "method.params.sam_rho": 0.1})
    with pytest.raises(ConfigError, match="robust .*forget updates.*sam_rho=0"):
        check_supported(with_overrides(cfg, {"train.deepspeed_stage": 2}))
    with pytest.raises(ConfigError, match="grad_accum=2.*robust"):
        check_supported(with_overrides(cfg, {"train.grad_accum": 2}))
    check_supported(with_overrides(RunConfig(), {"method.name": "npo", "train.grad_accum": 2}))


def test_robustness_counts_its_passes():
    assert Robustness().passes() == 1.0 and not Robustness().active
    assert Robustness(sam_rho=0.1).passes() == 2.0
    assert Robustness(rs_sigma=0.1, rs_samples=4).passes() == 4.0
    assert Robustness(sam_rho=0.1, tar_steps=3).passes() == 5.0


# ---- 2-worker DDP: several backward passes per step keep the ranks in sync ------------------------
def _ddp_worker(rank: int, port: int, out: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model, ref = tiny_llava(seed=0), tiny_llava(seed=0)
        method = get_method("npo", {"sam_rho": 0.1, "tar_steps": 1})
        built = BuiltModel(model=model, processor=None, cfg=RunConfig(), streams={}, method=method)
        ddp = DistributedDataParallel(model, **ddp_kwargs(built))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        forget = itertools.repeat(llava_batch(10 + rank, B=2))
        retain = itertools.repeat(llava_batch(20 + rank, text_only=True))  # no vision gradient
        step = make_step(method, ref, ddp, opt, {"forget": forget, "retain": retain}, TrainConfig(steps=3))
        for i in range(3):
            step(i)
        out[rank] = {n: p.detach().clone() for n, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()


def test_two_worker_ddp_with_sam_and_tamper_resistance_stays_in_sync():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(free_ports(1)[0], out), nprocs=2, join=True)
        w0, w1 = dict(out[0]), dict(out[1])
    before = dict(tiny_llava(seed=0).named_parameters())
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    assert any(not torch.equal(w0[n], before[n]) for n in w0)


# ---- PUBG with NPO's forget term --------------------------------------------------------------------
def test_pubg_with_npo_forget_term_matches_the_hand_formula(forget, retain):
    """L = w_ga * NPO_f + w_ret * NLL_r (w_bg 0 here), NPO_f written out from the per-row log-probs,
    and its gradient from the closed-form bigram formula."""
    w_ga, beta, w_ret = 0.7, 0.5, 0.3
    model, ref = BigramLM(seed=0), BigramLM(seed=3)
    method = get_method(
        "pubg", {"w_ga": w_ga, "w_bg": 0.0, "w_ret": w_ret, "forget_term": "npo", "npo_beta": beta}
    )
    assert method.needs_ref and method.views == ("",)
    assert not get_method("pubg", {"w_bg": 0.0}).needs_ref  # the plain ascent needs no reference
    lp, lp_ref = hand_logp(model.table.detach(), forget), hand_logp(ref.table.detach(), forget)
    npo = (
        -(2 / beta)
        * sum(math.log(1 / (1 + math.exp(beta * (a - b)))) for a, b in zip(lp, lp_ref, strict=True))
        / len(lp)
    )
    nll_r = -sum(hand_logp(model.table.detach(), retain)) / sum(len(r) for r in pairs(retain))
    loss, stats = method.loss(model, forget, retain, ref)
    assert float(loss) == pytest.approx(w_ga * npo + w_ret * nll_r, rel=1e-5)
    assert stats["npo"] == pytest.approx(npo, rel=1e-5)
    theta = model.table.detach().clone()
    expected = theta.double() - (
        w_ga * hand_npo_grad(theta, ref.table.detach(), forget, beta) + w_ret * hand_nll_grad(theta, retain)
    )
    one_step(method, model, forget, retain, ref)
    torch.testing.assert_close(model.table.detach().double(), expected, atol=2e-5, rtol=1e-5)
