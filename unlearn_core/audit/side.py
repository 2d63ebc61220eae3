"""Every attack on one model: the raw figures the verdict compares between the audited model and the
retrained reference. The reference's side depends only on its weights, the rows and the settings, so
the pipeline computes it once and caches it (a sweep audits many models against one reference)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from unlearn_core.audit import measure, membership, probes
from unlearn_core.audit.quantize import RTN_BITS, rtn_quantized
from unlearn_core.audit.relearn import relearn
from unlearn_core.audit.rows import AuditRows, image_key

CHECKS: tuple[str, ...] = ("membership", "quantization", "relearn", "benign", "probes")
# Bumped when an attack or what it measures changes: cached reference sides of another version are
# computed again.
AUDIT_VERSION = 1


@dataclass(frozen=True)
class AttackSettings:
    """How hard each attack pushes (the same for the audited model and the reference)."""

    relearn_steps: tuple[int, ...] = (1, 2, 4, 8, 16)
    relearn_lr: float = 5e-4
    relearn_batch: int = 8
    benign_steps: int = 50
    quant_bits: tuple[int, ...] = RTN_BITS
    min_k: float = membership.MIN_K
    bootstrap: int = 1000
    seed: int = 0
    checks: tuple[str, ...] = CHECKS
    # Intra-op threads while attacking, always set (the figures may round differently with another
    # count). One: the tiny model's ops are too small to gain from two, and on a busy machine two
    # spinning threads made a forward 50x slower (1.8 s vs 0.036 s, batch 16, load ~10).
    torch_threads: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Progress:
    """Callback ``say(message)`` per finished step, and the wall time of each check."""

    say: Callable[[str], None] = lambda _m: None
    seconds: dict[str, float] = field(default_factory=dict)


def _timed(progress: Progress, name: str, who: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    progress.seconds[name] = time.perf_counter() - t0
    progress.say(f"{who}: {name} done in {progress.seconds[name]:.1f} s")
    return out


def membership_side(
    model: nn.Module, processor: Any, rows: AuditRows, settings: AttackSettings,
    reference_loss: Mapping[str, float] | None,
) -> dict[str, Any]:  # fmt: skip
    """Per-row scores of every attack on the member, unseen and holdout rows, with their groups."""
    groups = {"member": rows.member, "member_image": rows.member_image, "unseen": rows.unseen,
              "holdout": rows.holdout}  # fmt: skip
    unique = {str(r["sample_id"]): r for g in groups.values() for r in g}
    everything = list(unique.values())
    stats = membership.token_stats(model, processor, everything)
    scores = membership.attack_scores(stats, everything, reference_loss=reference_loss, k=settings.min_k)
    at = {sid: i for i, sid in enumerate(unique)}
    out: dict[str, Any] = {"scores": {}, "ids": {}, "people": {}, "images": {}}
    for name, g in groups.items():
        out["ids"][name] = [str(r["sample_id"]) for r in g]
        out["people"][name] = [str(r["entity_id"]) for r in g]
        out["images"][name] = [str(image_key(r)) for r in g]
        out["scores"][name] = {a: [v[at[str(r["sample_id"])]] for r in g] for a, v in scores.items()}
    out["loss"] = dict(zip(unique, scores["loss"], strict=True))
    return out


def audit_side(
    model: nn.Module,
    processor: Any,
    rows: AuditRows,
    settings: AttackSettings,
    *,
    reference_loss: Mapping[str, float] | None = None,
    progress: Progress | None = None,
    who: str = "model",
) -> dict[str, Any]:
    """Every attack of ``settings.checks`` on ``model``. ``reference_loss`` (the reference side's
    ``membership.loss``) adds the reference attack; without it ``model`` is the reference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads)
    try:
        return _attack(model, processor, rows, settings, reference_loss, progress or Progress(), who)
    finally:
        torch.set_num_threads(threads)


def _attack(
    model: nn.Module, processor: Any, rows: AuditRows, settings: AttackSettings,
    reference_loss: Mapping[str, float] | None, progress: Progress, who: str,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {"settings": settings.as_dict()}
    full = _timed(progress, "plain", who, lambda: measure.forget_figures(model, processor, rows))
    out["plain"] = full
    if "membership" in settings.checks:
        out["membership"] = _timed(
            progress,
            "membership",
            who,
            lambda: membership_side(model, processor, rows, settings, reference_loss),
        )
    if "quantization" in settings.checks:

        def quantized() -> dict[str, Any]:
            return {
                f"rtn{bits}": measure.forget_figures(rtn_quantized(model, bits), processor, rows)
                for bits in settings.quant_bits
            }

        out["quantization"] = _timed(progress, "quantization", who, quantized)
    if "relearn" in settings.checks:

        def relearned() -> dict[str, Any]:
            figures, trained = relearn(
                model, processor, rows.relearn_train, checkpoints=settings.relearn_steps,
                measure=lambda m: measure.relearn_figures(m, processor, rows),
                lr=settings.relearn_lr, batch_size=settings.relearn_batch, seed=settings.seed,
            )  # fmt: skip
            return {"figures": {str(k): v for k, v in figures.items()}, "trained_ids": trained}

        out["relearn"] = _timed(progress, "relearn", who, relearned)
    if "benign" in settings.checks:

        def benign() -> dict[str, Any]:
            figures, _ = relearn(
                model, processor, rows.benign_train, checkpoints=(settings.benign_steps,),
                measure=lambda m: measure.forget_figures(m, processor, rows),
                lr=settings.relearn_lr, batch_size=settings.relearn_batch, seed=settings.seed,
                measure_start=False,
            )  # fmt: skip
            return {"after": figures[settings.benign_steps]}

        out["benign"] = _timed(progress, "benign", who, benign)
    if "probes" in settings.checks:
        out["probes"] = _timed(
            progress, "probes", who, lambda: probes.probe_figures(model, processor, rows, seed=settings.seed)
        )
    out["seconds"] = dict(progress.seconds)
    return out
