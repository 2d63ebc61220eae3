"""Base class of the unlearning methods and the loss helpers they share.

A method is a small object built from a validated pydantic ``Params`` model. It computes a loss and
declares everything the pipeline and the trainer must provide, so no caller tests method names:

- ``needs_ref``: a frozen copy of the model before unlearning (passed as ``ref``), e.g. NPO, KL, and
  PUBG with a live teacher.
- ``needs_retain``: a retain batch at every step; ``retain_weight`` names the Params field that weighs
  the retain term, when there is one: a weight of 0 reads no retain stream.
- ``views``: the key prefixes of the *forget* batch the data loader must provide (``""`` = the plain
  forget rows, ``idk_``, ``rand_``, ``guide_``, ``teacher_``). The retain batch is always the plain view.
- ``shard_views``: views built when the shards are written (``ShardView``: a key prefix and a
  function that picks an alternative answer per forget row, e.g. ``reject``'s refusal, ``random``'s
  other entity's answer). The shards carry the views of every registered method, so one set of shards
  serves them all; a new method with a new view is its own file plus its registry line.
- prepared inputs, built once by the pipeline before training and cached:
  ``teacher_cache()`` (PUBG: the teacher's answers and top-k log-probs; the ``guide_`` / ``teacher_``
  views come from it) and ``mask_spec()`` (a saliency mask: its module group, threshold and the
  rows its forget / preserve Fisher are computed on). The pipeline writes the mask file's path
  into the ``mask_path`` param.
- ``layer_hooks()``: the decoder layers of the language model whose output the loss reads
  (``LayerHook``; RMU). The worker checks each exists before training; ``layer_output`` captures
  one with a forward hook. ``reads_logits`` False says the loss reads nothing after those layers,
  so a parameter after the last one could never get a gradient: the worker refuses to train one.
- ``trainable_regex()``: only parameters whose name matches it train (RMU: a few layers); the worker
  freezes the rest after the LoRA / full fine-tuning set-up, for both.
- ``derive(sizes, train)``: param values derived from the training streams' sizes and the trainer's
  config (MMUnlearner's k and its ascent lr) when the user left them unset; ``resolved_params()`` is every param value the run uses.
- ``custom_step``: False -> the trainer uses ``backward()`` (``scale=1/accum`` for gradient
  accumulation, or DeepSpeed's ``engine.backward(loss())``) followed by ``optimizer_step()``.
  True -> the method does its own optimizer steps in ``train_step`` (MMUnlearner and masked PUBG: two
  separate updates with a saliency mask); the trainer calls ``train_step`` once per step (no gradient
  accumulation, plain DDP only, with ``find_unused_parameters`` since a retain-only step may leave the
  vision tower without a gradient); ``uses_forget_batch(step)`` says whether that step reads one.

Every update checks its loss and gradient norm first and raises ``NonFiniteLossError`` (naming the
loss terms) instead of stepping: gradient ascent is unbounded, and one NaN step ruins the weights.

The loss split. A method whose loss is a forget term plus a retain term implements
``forget_loss(model, forget, ref)`` (and ``retain_loss`` when its retain term is not
``retain_weight * NLL_r``); ``loss`` is then their sum. Such a method's Params extend
``method_params.ForgetRobustness``, and the relearning-resistant forget updates of
``methods/robust.py`` (SAM, randomised smoothing, tamper resistance) apply to it without a line of
its own: with any of them on, ``custom_step`` is True and ``train_step`` differentiates the forget
term robustly and the retain term plainly, then steps once (or, for a masked method, hands the forget
gradient to its masked update). Tamper resistance relearns on the true answers, so it adds the plain
view ``""`` to ``views``.

The class attributes above are defaults; a method whose needs depend on its params otherwise (PUBG's
views and reference model) sets them on the instance in ``configure()``, which ``__init__`` calls
before it applies the robustness options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from unlearn_core.config import TrainConfig
from unlearn_core.data.encode import model_inputs
from unlearn_core.method_params import StrictParams, field_names
from unlearn_core.methods.losses import answer_nll
from unlearn_core.methods.robust import Robustness, robust_forget_grads, set_grads
from unlearn_core.tensors import move_batch, unwrap_model

__all__ = ["move_batch", "model_inputs", "unwrap_model"]  # re-exported for the methods

RowFilter = Callable[[Sequence[Mapping[str, Any]], int], list[Mapping[str, Any]]]


class NonFiniteLossError(FloatingPointError):
    """A loss or gradient norm is NaN / inf; the message names the loss terms."""


def non_finite_error(what: str, stats: Mapping[str, float]) -> NonFiniteLossError:
    """The error for a non-finite ``what`` (e.g. ``gradient norm nan``), naming the loss terms."""
    terms = ", ".join(f"{k}={x:.4g}" for k, x in stats.items()) or "none recorded"
    return NonFiniteLossError(f"non-finite {what} (loss terms: {terms}); no update was applied")


def ensure_finite(what: str, value: Tensor | float, stats: Mapping[str, float]) -> None:
    """Raise ``NonFiniteLossError`` when ``value`` is not finite (before any optimizer step)."""
    v = float(value.detach()) if isinstance(value, Tensor) else float(value)
    if not math.isfinite(v):
        raise non_finite_error(f"{what} {v}", stats)


AnswerPicker = Callable[[Sequence[Mapping[str, Any]], int], dict[str, str]]


@dataclass(frozen=True)
class ShardView:
    """A forget-row view written into the shards: ``{prefix}input_ids`` / ``{prefix}labels`` encode the
    row's image and question with the answer ``answers(rows, seed)[sample_id]`` (rows without one get
    nulls). ``rows`` are every record as a dict (``sample_id``, ``entity_id``, ``split``, ``task``,
    ``question``, ``answer``), in record order; ``seed`` is the shard seed. ``missing`` says why a row
    may get none (the run leaves such rows out of the forget stream and says how many)."""

    prefix: str
    answers: AnswerPicker
    missing: str = ""


@dataclass(frozen=True)
class LayerHook:
    """The loss reads the output hidden states of the language model's decoder layer ``index``
    (0-based); ``param`` is the Params field that chose it (named in errors)."""

    index: int
    param: str


@dataclass(frozen=True)
class TeacherCacheSpec:
    """PUBG's teacher, computed once: its answers under ``instruction`` and their top-``k`` log-probs."""

    instruction: str
    k: int


@dataclass(frozen=True)
class MaskSpec:
    """A saliency mask a method needs: module ``group``, Fisher-ratio threshold ``gamma``, and the
    recipe of the rows its Fisher is computed on: ``forget_rows(rows, budget)`` and
    ``preserve_rows(rows, group, budget)`` pick from all shard rows (``group`` is ``vision`` or
    ``language``: each has its own preserve set)."""

    group: str
    gamma: float
    forget_rows: RowFilter
    preserve_rows: Callable[[Sequence[Mapping[str, Any]], str, int], list[Mapping[str, Any]]]
    recipe: str  # names the row recipe in cache keys (change it when the recipe changes)


def forward_logits(model: nn.Module, batch: Mapping[str, Any], prefix: str = "") -> tuple[Tensor, Tensor]:
    """Run ``model`` on one view; returns ``(logits [B, T, V], labels [B, T])``.

    Labels are not passed to the model (our losses compute on the answer positions themselves).
    """
    kwargs = model_inputs(batch, prefix, labels=False)
    out = model(**kwargs, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits, batch[f"{prefix}labels"]


def ref_logits(ref: nn.Module | None, batch: Mapping[str, Any], prefix: str = "") -> tuple[Tensor, Tensor]:
    """``forward_logits`` on the frozen reference model, without gradients."""
    if ref is None:
        raise ValueError("this method needs the frozen reference model (ref) but got None")
    with torch.no_grad():
        logits, labels = forward_logits(ref, batch, prefix)
    return logits.detach(), labels


def nll(model: nn.Module, batch: Mapping[str, Any], prefix: str = "") -> Tensor:
    """Answer-token NLL of ``model`` on one view."""
    logits, labels = forward_logits(model, batch, prefix)
    return answer_nll(logits, labels)


def zero_grad(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def clip_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    stats: Mapping[str, float] | None = None,
) -> float:
    """Clip the gradient norm of all trainable parameters and take one optimizer step; a non-finite
    norm raises ``NonFiniteLossError`` naming ``stats`` (the loss terms of the batch) instead."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if params else torch.zeros(())
    ensure_finite("gradient norm", norm, stats or {})
    optimizer.step()
    return float(norm)


class UnlearnMethod:
    """Base of every unlearning method (see the module docstring)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = StrictParams
    needs_ref: bool = False
    needs_retain: bool = False
    retain_weight: ClassVar[str | None] = None  # the Params field weighing the retain term
    views: tuple[str, ...] = ("",)
    shard_views: ClassVar[tuple[ShardView, ...]] = ()
    custom_step: bool = False
    reads_logits: bool = True
    params: BaseModel

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params = params if params is not None else self.Params()
        if self.retain_weight is not None:
            self.needs_retain = getattr(self.params, self.retain_weight) > 0
        self.configure()
        self.robust = Robustness.of(self.params)
        if self.robust is not None and self.robust.active:
            if type(self).forget_loss is UnlearnMethod.forget_loss:
                raise TypeError(f"{type(self).__name__} takes robustness options but has no forget_loss")
            self.custom_step = True
            if self.robust.tar_steps > 0 and "" not in self.views:
                self.views = ("", *self.views)
            if self.robust.tar_steps > 0 and self.robust.tar_attack == "retain":
                self.needs_retain = True  # the simulated benign relearning trains on it

    def configure(self) -> None:
        """Set the needs that depend on the params (views, reference model, own steps); default none."""

    @property
    def robust_active(self) -> bool:
        return self.robust is not None and self.robust.active

    # -- what the pipeline prepares --------------------------------------------------------------
    def teacher_cache(self) -> TeacherCacheSpec | None:
        """The teacher answers this method reads (None: none)."""
        return None

    def mask_spec(self) -> MaskSpec | None:
        """The saliency mask this method updates through (None: none)."""
        return None

    def layer_hooks(self) -> tuple[LayerHook, ...]:
        """The decoder layers whose output the loss reads (none: it reads the logits only)."""
        return ()

    def trainable_regex(self) -> str | None:
        """Only parameters whose name matches this regex (``re.search``) train; None: all that the
        LoRA / full fine-tuning set-up made trainable."""
        return None

    def derive(self, stream_rows: Mapping[str, int], train: TrainConfig) -> dict[str, Any]:
        """Param values derived from the training streams' row counts (``{"forget": n, "retain": n}``)
        and the trainer's config for params the user left unset; ``{}`` when none."""
        return {}

    def resolved_params(self) -> dict[str, Any]:
        """Every param value this method runs with, defaults included (what MLflow records)."""
        return self.params.model_dump(mode="json")

    # -- what the trainer must honour ----------------------------------------------------------------
    @property
    def supports_grad_accum(self) -> bool:
        """Gradient accumulation needs the ``backward`` / ``optimizer_step`` split."""
        return not self.custom_step

    @property
    def find_unused_parameters(self) -> bool:
        """DDP must look for parameters without a gradient: a separate retain step on a text-only
        batch leaves the vision tower without one."""
        return self.custom_step

    def deepspeed_hint(self) -> str:
        """How to make this config DeepSpeed-compatible (appended to the refusal), if there is a way."""
        return self.params.plain_steps_hint()  # type: ignore[attr-defined]

    def uses_forget_batch(self, step: int) -> bool:
        """Whether ``train_step(step)`` reads a forget batch (the trainer draws one only then)."""
        return True

    # -- the objective -------------------------------------------------------------------------
    def forget_loss(
        self, model: nn.Module, forget: Mapping[str, Any], ref: nn.Module | None
    ) -> tuple[Tensor, dict[str, float]]:
        """The forget term alone (methods whose loss splits; see the module docstring)."""
        raise NotImplementedError(f"method {self.name!r} has no separate forget term")

    def retain_loss(
        self, model: nn.Module, retain: Mapping[str, Any] | None, ref: nn.Module | None
    ) -> tuple[Tensor | None, dict[str, float]]:
        """The retain term: ``weight * NLL_r`` with the ``retain_weight`` field (None when it is 0)."""
        weight = getattr(self.params, self.retain_weight) if self.retain_weight is not None else 0.0
        if weight == 0.0:
            return None, {}
        value = nll(model, self._require_retain(retain))
        return weight * value, {"retain_nll": float(value.detach())}

    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Return ``(loss to minimise, float stats for logging)``: ``forget_loss + retain_loss``."""
        loss, stats = self.forget_loss(model, forget, ref)
        r_loss, r_stats = self.retain_loss(model, retain, ref)
        stats.update(r_stats)
        return (loss if r_loss is None else loss + r_loss), stats

    def attack_loss(self, model: nn.Module, forget: Mapping[str, Any]) -> Tensor:
        """What tamper resistance's simulated attacker minimises: the NLL of the true answers."""
        return nll(model, forget)

    def robust_forget_backward(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        ref: nn.Module | None,
        step: int,
        retain: Mapping[str, Any] | None = None,
    ) -> tuple[float, dict[str, float]]:
        """Put the robust forget gradient (``methods/robust.py``) into ``.grad``; returns the forget
        loss at the current weights and the stats."""
        assert self.robust is not None
        grads, params, loss, stats = robust_forget_grads(
            model,
            self.robust,
            lambda batch: self.forget_loss(model, batch, ref),
            lambda batch: self.attack_loss(model, batch),
            forget,
            step,
            retain,
        )
        set_grads(params, grads)
        return loss, stats

    def _require_retain(self, retain: Mapping[str, Any] | None) -> Mapping[str, Any]:
        if retain is None:
            raise ValueError(f"method {self.name!r} with these params needs a retain batch, got None")
        return retain

    # -- the update ----------------------------------------------------------------------------
    def backward(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
        *,
        scale: float = 1.0,
    ) -> dict[str, float]:
        """``(loss * scale).backward()`` without zeroing or stepping: one micro-batch of gradient
        accumulation (use ``scale = 1 / accum_steps``). Returns the stats with ``loss`` unscaled."""
        if self.custom_step:
            raise RuntimeError(f"method {self.name!r} does its own optimizer steps: call train_step()")
        loss, stats = self.loss(model, forget, retain, ref)
        ensure_finite("loss", loss, stats)
        (loss * scale).backward()
        stats["loss"] = float(loss.detach())
        return stats

    def optimizer_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_grad_norm: float,
        stats: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Clip, step and zero the gradients after the last ``backward()`` of an accumulation window
        (``stats``: the window's loss terms, named if the gradient norm is not finite)."""
        norm = clip_and_step(model, optimizer, max_grad_norm, stats)
        optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm}

    def train_step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
        step: int,
        *,
        max_grad_norm: float,
    ) -> dict[str, float]:
        """One full update: zero_grad, backward, clip, optimizer.step(). ``step`` is the 0-based
        global step (used by methods with a schedule, e.g. MMUnlearner's every-k-th forget step, and
        by randomised smoothing's noise). With robustness options: the robust forget gradient plus
        the plain retain gradient, one step."""
        optimizer.zero_grad(set_to_none=True)
        if not self.robust_active:
            stats = self.backward(model, forget, retain, ref)
        else:
            zero_grad(model)
            f_loss, stats = self.robust_forget_backward(model, forget, ref, step, retain)
            r_loss, r_stats = self.retain_loss(model, retain, ref)
            stats.update(r_stats)
            total = f_loss
            if r_loss is not None:
                ensure_finite("retain loss", r_loss, stats)
                r_loss.backward()
                total += float(r_loss.detach())
            stats["loss"] = total
        stats.update(self.optimizer_step(model, optimizer, max_grad_norm=max_grad_norm, stats=stats))
        return stats

    # -- extra optimizer state of custom-step methods (checkpointing) ----------------------------
    def state_dict(self) -> dict[str, Any]:
        """State the method keeps outside the model and the trainer's optimizer (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state but got keys {sorted(state)}")

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Params fields with defaults and constraints (for docs and summaries)."""
        fields = {}
        for fname in field_names(cls.Params):
            info = cls.Params.model_fields[fname]
            constraints = [str(m) for m in info.metadata]
            fields[fname] = {"default": info.default, "constraints": constraints}
        return {"name": cls.name, "params": fields}
