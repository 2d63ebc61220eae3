"""Relearning-resistant forget updates: the gradient of a method's forget term, made robust.

Any method whose loss is a forget term plus a retain term (``UnlearnMethod.forget_loss`` /
``retain_loss``) takes these options through its Params (``method_params.ForgetRobustness``); the
retain term is always differentiated at the current weights ``theta``. Notation: ``L_f`` the
method's forget term (NPO's loss, PUBG's ``w_ga * (-NLL_f) + w_bg * L_BG``, ...), ``g(x)`` the
gradient of ``L_f`` at weights ``x``, ``||.||`` the L2 norm over every trainable parameter.

- **SAM** (Fan et al., ICML 2025, arXiv 2502.05374: unlearning as ``min_theta max_{||d|| <= rho}
  L_f(theta + d) + L_r(theta)``), ``sam_rho`` = rho > 0: ``eps = rho * g(theta) / ||g(theta)||``,
  forget gradient ``g(theta + eps)``. The worst-case first-order perturbation raises ``L_f``, i.e.
  undoes some unlearning, as a relearning step would; descending from there flattens the forget loss
  around ``theta``. Two forward-backward passes of the forget term.
- **Randomised smoothing** (Fan et al.'s RS), ``rs_sigma`` = sigma > 0: forget gradient
  ``(1/n) sum_i g(theta + d_i)``, ``d_i ~ N(0, sigma^2 I)`` (``rs_samples`` = n, noise seeded by the
  step index, so a resumed run draws the same). n forward-backward passes.
- **Tamper resistance** in the spirit of TAR (Tamirisa et al., ICLR 2025, arXiv 2408.00761),
  ``tar_steps`` = K > 0: the forget batch is split into an attack half A and a held-out half B (the
  audit relearns on some images and measures on others). From ``theta_0 = theta`` an attacker takes
  K AdamW steps (lr ``tar_lr``, no weight decay, fresh moments: the audit's attacker) on the answer
  NLL of A's true answers (the plain view), ``theta_k = AdamW(theta_{k-1}, grad NLL_A(theta_{k-1}))``;
  the tamper-resistance gradient is ``(tar_weight / K) * sum_k g_B(theta_k)``, the forget term on B
  after each attack step, applied to ``theta`` first-order (as TAR's implementation does: no
  gradient through the attack). It is added to the forget gradient. 2K forward-backward passes on
  half batches. ``tar_attack="retain"`` simulates benign relearning instead (Deeb & Roger; the audit's
  benign check): the attacker trains on the retain batch and B is the whole forget batch.

The weights are restored exactly after every perturbation or simulated attack (a copy, not
``theta + eps - eps``). SAM and randomised smoothing are alternatives (one at a time); either can be
combined with the tamper-resistance term.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

ForgetClosure = Callable[[Mapping[str, Any]], tuple[Tensor, dict[str, float]]]
AttackLoss = Callable[[Mapping[str, Any]], Tensor]
Grads = list[Tensor | None]

ROBUST_FIELDS = ("sam_rho", "rs_sigma", "rs_samples", "tar_steps", "tar_lr", "tar_weight", "tar_attack")


@dataclass(frozen=True)
class Robustness:
    """The robustness options of one run (all off by default)."""

    sam_rho: float = 0.0
    rs_sigma: float = 0.0
    rs_samples: int = 3
    tar_steps: int = 0
    tar_lr: float = 5e-4
    tar_weight: float = 1.0
    tar_attack: str = "forget"  # the simulated attacker's rows: "forget" (half the forget batch) or "retain"

    @classmethod
    def of(cls, params: BaseModel) -> Robustness | None:
        """The options a method's Params carry (None: its Params have no robustness fields)."""
        if not all(hasattr(params, f) for f in ROBUST_FIELDS):
            return None
        return cls(**{f: getattr(params, f) for f in ROBUST_FIELDS})

    @property
    def active(self) -> bool:
        return self.sam_rho > 0 or self.rs_sigma > 0 or self.tar_steps > 0

    def passes(self) -> float:
        """Forward-backward passes of the forget term per step, in full-batch units (1 = plain)."""
        smooth = 2.0 if self.sam_rho > 0 else float(self.rs_samples) if self.rs_sigma > 0 else 1.0
        return smooth + (self.tar_steps if self.tar_steps > 0 else 0)  # 2K passes on half batches


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def take_grads(params: Sequence[nn.Parameter], loss: Tensor) -> Grads:
    """``d loss / d params`` by one backward (through DDP's hooks), leaving every ``.grad`` None."""
    for p in params:
        p.grad = None
    loss.backward()
    out: Grads = []
    for p in params:
        out.append(p.grad)
        p.grad = None
    return out


def add_grads(a: Grads, b: Grads, scale: float = 1.0) -> Grads:
    """``a + scale * b`` element-wise (None = zero)."""
    out: Grads = []
    for x, y in zip(a, b, strict=True):
        if y is None:
            out.append(x)
        elif x is None:
            out.append(y * scale if scale != 1.0 else y)
        else:
            out.append(x.add(y, alpha=scale))
    return out


def grad_norm(grads: Grads) -> Tensor:
    norms = [g.detach().float().norm(2) for g in grads if g is not None]
    return torch.stack(norms).norm(2) if norms else torch.zeros(())


class Snapshot:
    """A copy of the trainable weights, written back exactly by ``restore``."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.saved = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        for p, s in zip(self.params, self.saved, strict=True):
            p.copy_(s)


def _finite(what: str, loss: Tensor, stats: Mapping[str, float]) -> None:
    from unlearn_core.methods.base import ensure_finite

    ensure_finite(what, loss, stats)


def plain_forget_grads(params: Sequence[nn.Parameter], closure: ForgetClosure, batch: Mapping[str, Any]):
    loss, stats = closure(batch)
    _finite("forget loss", loss, stats)
    return take_grads(params, loss), float(loss.detach()), stats


def sam_forget_grads(
    params: Sequence[nn.Parameter], closure: ForgetClosure, batch: Mapping[str, Any], rho: float
) -> tuple[Grads, float, dict[str, float]]:
    """``g(theta + rho * g(theta) / ||g(theta)||)``; a zero gradient leaves theta unperturbed."""
    g0, loss0, stats = plain_forget_grads(params, closure, batch)
    norm = grad_norm(g0)
    snap = Snapshot(params)
    scale = rho / float(norm) if float(norm) > 0 else 0.0
    try:
        with torch.no_grad():
            for p, g in zip(params, g0, strict=True):
                if g is not None:
                    p.add_(g, alpha=scale)
        loss1, stats1 = closure(batch)
        _finite("forget loss at the SAM perturbation", loss1, stats1)
        g1 = take_grads(params, loss1)
    finally:
        snap.restore()
    stats = {**stats, "sam_forget_loss": float(loss1.detach()), "sam_grad_norm": float(norm)}
    return g1, loss0, stats


def noise_generator(step: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(1_000_003 * (step + 1) + 17)
    return gen


def smoothed_forget_grads(
    params: Sequence[nn.Parameter],
    closure: ForgetClosure,
    batch: Mapping[str, Any],
    sigma: float,
    samples: int,
    step: int,
) -> tuple[Grads, float, dict[str, float]]:
    """``(1/n) sum_i g(theta + d_i)``, ``d_i ~ N(0, sigma^2 I)`` drawn from a generator seeded by ``step``."""
    snap = Snapshot(params)
    total: Grads = [None] * len(params)
    losses: list[float] = []
    stats: dict[str, float] = {}
    device = params[0].device if params else torch.device("cpu")
    gen = noise_generator(step, device)
    try:
        for _ in range(samples):
            with torch.no_grad():
                for p, s in zip(params, snap.saved, strict=True):
                    noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
                    p.copy_(s + sigma * noise)
            loss, stats = closure(batch)
            _finite("forget loss under weight noise", loss, stats)
            total = add_grads(total, take_grads(params, loss), 1.0 / samples)
            losses.append(float(loss.detach()))
    finally:
        snap.restore()
    return total, sum(losses) / len(losses), {**stats, "rs_forget_loss": sum(losses) / len(losses)}


def split_rows(batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """The first ``ceil(B/2)`` rows and the rest, every per-row tensor sliced; None when the batch
    has one row or a tensor whose first dimension is not per row (e.g. a family that flattens image
    patches, or a batch mixing text-only rows, whose pixel tensor has fewer rows)."""
    ids = batch.get("input_ids")
    if not isinstance(ids, Tensor) or ids.shape[0] < 2:
        return None
    n = ids.shape[0]
    cut = math.ceil(n / 2)
    first: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0:
            if value.shape[0] != n:
                return None
            first[key], rest[key] = value[:cut], value[cut:]
        else:
            first[key] = rest[key] = value
    return first, rest


def tamper_grads(
    params: Sequence[nn.Parameter],
    closure: ForgetClosure,
    attack_loss: AttackLoss,
    batch: Mapping[str, Any],
    *,
    steps: int,
    lr: float,
    weight: float,
    retain: Mapping[str, Any] | None = None,
) -> tuple[Grads, dict[str, float]]:
    """``(weight / K) * sum_k g_B(theta_k)`` after K simulated relearning steps on A (module docstring);
    the weights are restored afterwards. Without a row split (one row, or an unsplittable layout)
    A = B = the whole batch, reported as ``tar_heldout`` = 0. With ``retain`` (benign relearning) A is
    the retain batch and B the whole forget batch."""
    halves = split_rows(batch) if retain is None else (retain, batch)
    attack, held = halves if halves is not None else (batch, batch)
    snap = Snapshot(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total: Grads = [None] * len(params)
    after: list[float] = []
    attack_nll = float("nan")
    stats: dict[str, float] = {}
    try:
        for _ in range(steps):
            nll_a = attack_loss(attack)
            _finite("simulated relearning loss", nll_a, {"tar_attack_nll": float(nll_a.detach())})
            for p, g in zip(params, take_grads(params, nll_a), strict=True):
                p.grad = g
            opt.step()
            opt.zero_grad(set_to_none=True)
            attack_nll = float(nll_a.detach())
            loss, stats = closure(held)
            _finite("forget loss after simulated relearning", loss, stats)
            total = add_grads(total, take_grads(params, loss), weight / steps)
            after.append(float(loss.detach()))
    finally:
        opt.zero_grad(set_to_none=True)
        snap.restore()
    return total, {
        "tar_forget_loss": sum(after) / len(after),
        "tar_attack_nll": attack_nll,
        "tar_heldout": 0.0 if halves is None else 1.0,
    }


def robust_forget_grads(
    model: nn.Module,
    robust: Robustness,
    closure: ForgetClosure,
    attack_loss: AttackLoss,
    batch: Mapping[str, Any],
    step: int,
    retain: Mapping[str, Any] | None = None,
) -> tuple[Grads, list[nn.Parameter], float, dict[str, float]]:
    """The forget gradient with every option of ``robust``: (grads per trainable parameter, those
    parameters, the forget loss at theta, stats). ``retain``: the retain batch (``tar_attack="retain"``)."""
    params = trainable(model)
    if robust.sam_rho > 0 and robust.rs_sigma > 0:
        raise ValueError("sam_rho and rs_sigma are alternatives: set one of them")
    if robust.sam_rho > 0:
        grads, loss, stats = sam_forget_grads(params, closure, batch, robust.sam_rho)
    elif robust.rs_sigma > 0:
        grads, loss, stats = smoothed_forget_grads(
            params, closure, batch, robust.rs_sigma, robust.rs_samples, step
        )
    else:
        grads, loss, stats = plain_forget_grads(params, closure, batch)
    if robust.tar_steps > 0:
        if robust.tar_attack == "retain" and retain is None:
            raise ValueError("tar_attack='retain' simulates relearning on the retain batch, but got none")
        tar, tar_stats = tamper_grads(
            params, closure, attack_loss, batch,
            steps=robust.tar_steps, lr=robust.tar_lr, weight=robust.tar_weight,
            retain=retain if robust.tar_attack == "retain" else None,
        )  # fmt: skip
        grads = add_grads(grads, tar)
        stats = {**stats, **tar_stats}
    return grads, params, loss, stats


def set_grads(params: Sequence[nn.Parameter], grads: Grads) -> None:
    """``p.grad = g`` (accumulating onto a gradient already there)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        p.grad = g if p.grad is None else p.grad + g
