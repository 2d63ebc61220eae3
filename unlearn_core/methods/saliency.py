"""MMUnlearner's parameter saliency: per-element Fisher, the ratio mask, and the masked update.

1. ``fisher_diagonal``: F = mean over batches of grad(NLL)^2, per element of each selected parameter
   (one backward per batch, the squared *batch* gradient, as in the reference code). The model is put
   in eval mode (no dropout) while it runs.
2. ``ratio_mask``: m = [(F_forget + 1e-15) / (F_preserve + 1e-15) >= gamma]. Note that an element with
   zero Fisher on both sets has ratio 1, so it is selected when gamma <= 1 (the paper's formula).
3. ``compute_saliency_masks`` does both per module group (``vision`` = vision tower + projector,
   ``language`` = the LLM; ``both`` is their union), with one preserve loader per group.
4. ``SaliencyMask`` saves / loads masks as safetensors (bool tensors keyed by parameter name, the
   groups, gamma and per-group sparsity in the metadata).
5. ``MaskedUpdate`` takes an update that touches masked-in entries only.

Parameter names. Mask keys are the model's *real* ``named_parameters()`` names (DDP / DeepSpeed
wrappers stripped), and only trainable parameters get a mask. With PEFT LoRA the trainable
parameters are the adapters, so the masks are keyed by ``lora_A`` / ``lora_B``
(``base_model.model....q_proj.lora_A.default.weight``), derived from the Fisher of the base weight
they adapt (PEFT's B = 0 init makes the factors' own Fisher meaningless; see ``lora_ratio_masks``). The reference code computed masks on the base names, so with LoRA none of its
keys matched and the mask did nothing; ``check_mask_matches`` makes such a mismatch an error.
The ``module_groups`` callable (``model -> {"vision": [...], "language": [...]}``) may list
parameter names or module prefixes, with or without PEFT's ``base_model.model.`` prefix and
adapter segments; ``resolve_groups`` maps them onto the real trainable parameter names.

The masked update (fixes the reference's defects 2 and 3): gradients of masked-out entries are
zeroed, parameters outside the mask get no gradient at all, and the step is taken by a *separate*
AdamW (weight decay 0) that only ever sees masked gradients, so no momentum from other steps
(the trainer's optimizer) can move masked-out entries. With zero gradients, zero Adam moments and
no weight decay the masked-out update is exactly 0; ``restore=True`` additionally copies the
masked-out entries back after the step, which guarantees bit-identity for any optimizer quirk at
the cost of a temporary copy of those entries.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from unlearn_core.methods.base import ensure_finite, nll, zero_grad
from unlearn_core.tensors import move_batch, unwrap_model

log = logging.getLogger(__name__)

ModuleGroupsFn = Callable[[nn.Module], Mapping[str, Sequence[str]]]
BASE_GROUPS: tuple[str, ...] = ("vision", "language")
MASK_FORMAT = "lvlm-unlearn-saliency-mask"
EPS = 1e-15

_PEFT_SEGMENT = re.compile(
    r"\.(?:lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(?:\.[^.]+)?(?=\.|$)"
)


def _name_variants(name: str) -> set[str]:
    """Spellings of a parameter name that a module-group listing might use."""
    out = {name}
    n = name.removeprefix("module.")
    out.add(n)
    if n.startswith("base_model.model."):
        out.add(n[len("base_model.model.") :])
    for v in list(out):
        stripped = _PEFT_SEGMENT.sub("", v).replace(".base_layer.", ".")
        if stripped != v:
            out.add(stripped)
            if not stripped.endswith((".weight", ".bias")):
                out.add(stripped + ".weight")
    return out


def _matches(name: str, listed: set[str]) -> bool:
    for v in _name_variants(name):
        parts = v.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in listed:
                return True
    return False


def expand_group(group: str) -> tuple[str, ...]:
    if group == "both":
        return BASE_GROUPS
    if group in BASE_GROUPS:
        return (group,)
    raise ValueError(f"unknown mask group {group!r}; valid: vision, language, both")


def resolve_groups(model: nn.Module, module_groups: ModuleGroupsFn) -> dict[str, list[str]]:
    """``{"vision": [...], "language": [...]}`` of real *trainable* parameter names.

    Groups are disjoint: a parameter listed under both goes to the first (vision).
    """
    base = unwrap_model(model)
    listing = module_groups(base)
    unknown = set(listing) - set(BASE_GROUPS)
    if unknown:
        log.info("module groups %s are ignored (only vision and language are maskable)", sorted(unknown))
    listed = {g: set(listing.get(g, ())) for g in BASE_GROUPS}
    out: dict[str, list[str]] = {g: [] for g in BASE_GROUPS}
    for name, p in base.named_parameters():
        if not p.requires_grad:
            continue
        for g in BASE_GROUPS:
            if _matches(name, listed[g]):
                out[g].append(name)
                break
    return out


def fisher_diagonal(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    names: Sequence[str],
    *,
    prefix: str = "",
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """Per-element F = mean over batches of grad(NLL)^2 for the parameters ``names`` (float32)."""
    base = unwrap_model(model)
    params = dict(base.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"not parameters of the model: {missing[:5]}")
    device = next(base.parameters()).device
    fisher = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            zero_grad(model)
            nll(model, move_batch(batch, device), prefix).backward()
            for n in names:
                g = params[n].grad
                if g is not None:
                    fisher[n] += g.detach().float() ** 2
            count += 1
    finally:
        zero_grad(model)
        model.train(was_training)
    if count == 0:
        raise ValueError("fisher_diagonal got no batches")
    return {n: f / count for n, f in fisher.items()}


def ratio_mask(
    fisher_forget: Mapping[str, Tensor], fisher_preserve: Mapping[str, Tensor], gamma: float = 1.0
) -> dict[str, Tensor]:
    """m = [(F_f + 1e-15) / (F_p + 1e-15) >= gamma] per parameter (bool tensors)."""
    if set(fisher_forget) != set(fisher_preserve):
        raise ValueError("forget and preserve Fisher dicts cover different parameters")
    return {n: (f + EPS) / (fisher_preserve[n] + EPS) >= gamma for n, f in fisher_forget.items()}


@dataclass
class SaliencyMask:
    """Bool masks keyed by real parameter name, and which group each parameter belongs to."""

    masks: dict[str, Tensor]
    groups: dict[str, list[str]]
    gamma: float = 1.0
    meta: dict[str, str] = field(default_factory=dict)

    def select(self, group: str) -> dict[str, Tensor]:
        names = [n for g in expand_group(group) for n in self.groups.get(g, [])]
        if not names:
            raise ValueError(
                f"mask group {group!r} has no parameters (groups present: "
                f"{ {g: len(v) for g, v in self.groups.items()} }); was it trainable when the mask was computed?"
            )
        return {n: self.masks[n] for n in names}

    def selected_fraction(self) -> dict[str, float]:
        """Share of entries masked in (updated) per group, plus ``both``."""
        out: dict[str, float] = {}
        tot_sel = tot = 0
        for g, names in self.groups.items():
            sel = sum(int(self.masks[n].sum()) for n in names)
            num = sum(self.masks[n].numel() for n in names)
            out[g] = sel / num if num else 0.0
            tot_sel, tot = tot_sel + sel, tot + num
        out["both"] = tot_sel / tot if tot else 0.0
        return out

    def sparsity(self) -> dict[str, float]:
        """Share of entries masked out (frozen during the forget update) per group."""
        return {g: 1.0 - f for g, f in self.selected_fraction().items()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}
        metadata = {
            **self.meta,
            "format": MASK_FORMAT,
            "gamma": repr(float(self.gamma)),
            "groups": json.dumps(self.groups),
            "sparsity": json.dumps(self.sparsity()),
        }
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SaliencyMask:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"saliency mask not found: {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != MASK_FORMAT:
                raise ValueError(
                    f"{path} is not a saliency mask file (metadata format={meta.get('format')!r})"
                )
            masks = {k: f.get_tensor(k).to(torch.bool) for k in f.keys()}
        groups = json.loads(meta.pop("groups"))
        gamma = float(meta.pop("gamma"))
        meta.pop("format", None)
        meta.pop("sparsity", None)
        return cls(masks=masks, groups=groups, gamma=gamma, meta=meta)


def check_mask_matches(
    model: nn.Module, masks: Mapping[str, Tensor], expected: Sequence[str] | None = None
) -> None:
    """Every mask key must be a trainable parameter of ``model`` with the same shape, and (with
    ``expected``, the trainable parameters of the mask's group) every one of them must have a mask:
    a parameter without one would get no forget update at all."""
    params = dict(unwrap_model(model).named_parameters())
    missing = [k for k in masks if k not in params]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(masks)} saliency-mask keys are not parameter names of the model, "
            f"e.g. {missing[:3]}; the model's parameters look like {list(params)[:3]}. A mask only fits "
            "the model (and LoRA config) it was computed on."
        )
    bad = [
        (k, tuple(m.shape), tuple(params[k].shape)) for k, m in masks.items() if m.shape != params[k].shape
    ]
    if bad:
        raise ValueError(f"saliency-mask shapes differ from the parameters: {bad[:3]}")
    frozen = [k for k in masks if not params[k].requires_grad]
    if frozen:
        raise ValueError(f"saliency mask covers frozen parameters: {frozen[:3]}")
    if expected is not None:
        uncovered = [n for n in expected if n not in masks]
        if uncovered:
            raise ValueError(
                f"the saliency mask covers {len(expected) - len(uncovered)} of the {len(expected)} trainable "
                f"parameters of its group; no mask for e.g. {uncovered[:3]}. It was computed for another "
                "trainable set (LoRA targets, train_vision): recompute it for this model config."
            )


_LORA_A = re.compile(r"^(?P<module>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")


def lora_factors(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{base weight name: (lora_A name, lora_B name)}`` for the LoRA-adapted linear layers whose
    two factors are both in ``names``."""
    params = dict(unwrap_model(model).named_parameters())
    wanted = set(names)
    out: dict[str, tuple[str, str]] = {}
    for n in names:
        m = _LORA_A.match(n)
        if m is None:
            continue
        b = f"{m['module']}.lora_B.{m['adapter']}.weight"
        base = f"{m['module']}.base_layer.weight"
        if b in wanted and base in params and params[base].dim() == 2:
            out[base] = (n, b)
    return out


def lora_ratio_masks(
    f_forget: Tensor, f_preserve: Tensor, shape_a: torch.Size, shape_b: torch.Size, gamma: float
) -> tuple[Tensor, Tensor]:
    """LoRA factor masks from the Fisher of the adapted base weight W [out, in].

    PEFT starts LoRA with B = 0, so the gradient (and Fisher) of A is exactly 0 at the start and the
    one of B depends on the random A: neither says which weights carry the forget knowledge. The
    base weight's Fisher does. The update is dW = B A; ``lora_B`` row i moves output i and ``lora_A``
    column j reads input j, so B's rows are masked by the output rows of W whose summed Fisher ratio
    is >= gamma and A's columns by W's input columns likewise.
    """
    rows = (f_forget.sum(1) + EPS) / (f_preserve.sum(1) + EPS) >= gamma
    cols = (f_forget.sum(0) + EPS) / (f_preserve.sum(0) + EPS) >= gamma
    return cols.unsqueeze(0).expand(shape_a).clone(), rows.unsqueeze(1).expand(shape_b).clone()


def compute_saliency_masks(
    model: nn.Module,
    module_groups: ModuleGroupsFn,
    forget_batches: Iterable[Mapping[str, Any]],
    preserve_batches: Iterable[Mapping[str, Any]] | Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    gamma: float = 1.0,
    groups: Sequence[str] = BASE_GROUPS,
    max_batches: int | None = None,
) -> SaliencyMask:
    """Fisher on the forget set and on each group's preserve set, then the ratio mask.

    ``preserve_batches`` is one re-iterable loader for all groups, or ``{group: loader}`` (the
    paper: vision <- retain VQA; language <- retain VQA + text-only QA of all entities).
    LoRA factors get their masks from the Fisher of the base weight they adapt (``lora_ratio_masks``).
    """
    resolved = resolve_groups(model, module_groups)
    wanted = [g for grp in groups for g in expand_group(grp)]
    wanted = list(dict.fromkeys(wanted))
    for g in wanted:
        if not resolved[g]:
            raise ValueError(f"module group {g!r} has no trainable parameters")
    all_names = [n for g in wanted for n in resolved[g]]
    factors = lora_factors(model, all_names)
    via_base = {n for pair in factors.values() for n in pair}

    def fisher_names(names: Sequence[str]) -> list[str]:
        bases = [b for b, (a, _) in factors.items() if a in names]
        return [n for n in names if n not in via_base] + bases

    params = dict(unwrap_model(model).named_parameters())
    frozen = [b for b in factors if not params[b].requires_grad]
    for b in frozen:  # the base weights' gradients, for the Fisher only
        params[b].requires_grad_(True)
    try:
        f_forget = fisher_diagonal(model, forget_batches, fisher_names(all_names), max_batches=max_batches)
        masks: dict[str, Tensor] = {}
        for g in wanted:
            loader = preserve_batches[g] if isinstance(preserve_batches, Mapping) else preserve_batches
            names = fisher_names(resolved[g])
            f_pres = fisher_diagonal(model, loader, names, max_batches=max_batches)
            direct = [n for n in names if n not in factors]
            masks.update(ratio_mask({n: f_forget[n] for n in direct}, {n: f_pres[n] for n in direct}, gamma))
            for base in (n for n in names if n in factors):
                a, b = factors[base]
                masks[a], masks[b] = lora_ratio_masks(
                    f_forget[base], f_pres[base], params[a].shape, params[b].shape, gamma
                )
    finally:
        for b in frozen:
            params[b].requires_grad_(False)
            params[b].grad = None
    sal = SaliencyMask(masks=masks, groups={g: resolved[g] for g in wanted}, gamma=gamma)
    log.info("saliency masks (gamma=%s): selected fraction %s", gamma, sal.selected_fraction())
    return sal


def mask_cache_key(
    model_sha: str, shards_fingerprint: str, spec: Any, model_cfg: Mapping[str, Any], seed: int
) -> str:
    """What a saliency mask depends on: the weights, the shards, the group, gamma and row recipe,
    the trainable set (LoRA on/off, r, alpha, dropout, targets, train_vision) and, with LoRA, the
    seed its adapters are drawn from. 16 hex digits."""
    import hashlib

    trainable = {
        k: model_cfg.get(k)
        for k in ("lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "train_vision", "dtype")
    }
    raw = json.dumps(
        [
            model_sha,
            shards_fingerprint,
            spec.group,
            float(spec.gamma),
            spec.recipe,
            trainable,
            seed if model_cfg.get("lora") else None,
        ],
        sort_keys=True,
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class MaskedUpdate:
    """Gradient step restricted to the masked-in entries (see the module docstring).

    The mask comes from ``set_mask`` or, lazily at the first step, from ``mask_path`` + ``group``.
    The AdamW it steps with is created at the first step over the masked parameters only, with the
    trainer optimizer's betas / eps and weight decay 0; its lr follows the trainer optimizer's
    first param group (so LR schedules apply) unless ``lr`` is given.
    """

    def __init__(
        self,
        group: str,
        mask_path: str | None = None,
        *,
        restore: bool = True,
        lr: float | None = None,
        module_groups: ModuleGroupsFn | None = None,
    ) -> None:
        expand_group(group)
        self.group = group
        self.module_groups = module_groups
        self.mask_path = mask_path
        self.restore = restore
        self.lr = lr
        self._masks: dict[str, Tensor] | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._out: dict[str, Tensor] = {}
        self._opt: torch.optim.Optimizer | None = None
        self._pending_state: Mapping[str, Any] | None = None

    def set_mask(self, mask: SaliencyMask | Mapping[str, Tensor]) -> None:
        self._masks = dict(mask.select(self.group) if isinstance(mask, SaliencyMask) else mask)
        self._params, self._out, self._opt = {}, {}, None

    @property
    def masks(self) -> dict[str, Tensor]:
        if self._masks is None:
            if self.mask_path is None:
                raise ValueError(
                    f"a masked update (group {self.group!r}) needs a saliency mask: set mask_path or call set_mask()"
                )
            self._masks = SaliencyMask.load(self.mask_path).select(self.group)
        return self._masks

    def _bind(self, model: nn.Module, main: torch.optim.Optimizer | None) -> torch.optim.Optimizer:
        if self._opt is not None:
            return self._opt
        masks = self.masks
        groups_fn = self.module_groups
        if groups_fn is None:
            from unlearn_core.models.families import module_groups as groups_fn
        resolved = resolve_groups(model, groups_fn)
        check_mask_matches(model, masks, [n for g in expand_group(self.group) for n in resolved[g]])
        params = dict(unwrap_model(model).named_parameters())
        self._params = {n: params[n] for n in masks}
        self._out = {n: (~m.to(params[n].device, torch.bool)).contiguous() for n, m in masks.items()}
        defaults = main.defaults if main is not None else {}
        self._opt = torch.optim.AdamW(
            list(self._params.values()),
            lr=self._current_lr(main),
            betas=defaults.get("betas", (0.9, 0.999)),
            eps=defaults.get("eps", 1e-8),
            weight_decay=0.0,
        )
        if self._pending_state is not None:
            self._opt.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._opt

    def _current_lr(self, main: torch.optim.Optimizer | None) -> float:
        """``lr`` on the trainer's schedule (scaled as the trainer's optimizer is now, relative to its
        peak), or the trainer's scheduled lr itself when ``lr`` is None."""
        if main is None:
            if self.lr is None:
                raise ValueError("MaskedUpdate needs lr or the trainer's optimizer")
            return self.lr
        group = main.param_groups[0]
        if self.lr is None:
            return float(group["lr"])
        return self.lr * float(group["lr"]) / float(group.get("initial_lr", group["lr"]))

    def step(
        self,
        model: nn.Module,
        loss: Tensor,
        *,
        max_grad_norm: float,
        main_optimizer: torch.optim.Optimizer | None = None,
        stats: Mapping[str, float] | None = None,
    ) -> float:
        """Backward ``loss`` (gradients must be zero before), mask, clip, step; returns the grad norm.
        ``stats`` (the loss terms of the batch) are named if the loss or the norm is not finite.

        Gradients are zeroed again afterwards so the trainer's next step starts clean.
        """
        terms = {**(stats or {}), "loss": float(loss.detach())}
        ensure_finite("masked-step loss", loss, terms)
        loss.backward()
        return self.step_from_grads(
            model, max_grad_norm=max_grad_norm, main_optimizer=main_optimizer, stats=terms
        )

    def step_from_grads(
        self,
        model: nn.Module,
        *,
        max_grad_norm: float,
        main_optimizer: torch.optim.Optimizer | None = None,
        stats: Mapping[str, float] | None = None,
    ) -> float:
        """The masked step from the gradients already in ``.grad`` (e.g. a robust forget gradient):
        mask, clip, step, zero; returns the grad norm. ``stats`` (the batch's loss terms) are named
        if the norm is not finite."""
        terms = dict(stats or {})
        opt = self._bind(model, main_optimizer)
        masked = set(self._params)
        for name, p in unwrap_model(model).named_parameters():
            if name not in masked:
                p.grad = None  # outside the mask: no ascent update at all
            elif p.grad is not None:
                p.grad.masked_fill_(self._out[name], 0.0)
        with_grad = [p for p in self._params.values() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(with_grad, max_grad_norm) if with_grad else torch.zeros(())
        if not torch.isfinite(norm):
            zero_grad(model)
            ensure_finite("masked-step gradient norm", norm, terms)
        snapshot: dict[str, Tensor] = {}
        if self.restore:
            snapshot = {n: p.detach()[self._out[n]].clone() for n, p in self._params.items()}
        for g in opt.param_groups:
            g["lr"] = self._current_lr(main_optimizer)
        opt.step()
        if self.restore:
            with torch.no_grad():
                for n, p in self._params.items():
                    p[self._out[n]] = snapshot[n]
        zero_grad(model)
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return self._opt.state_dict() if self._opt is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if self._opt is not None:
            self._opt.load_state_dict(dict(state))
        else:
            self._pending_state = dict(state)
