"""A quick audit for the training loop: two of the audit's attacks, small enough to run at every
in-training evaluation, so a sweep's objective can weigh them and ASHA can stop trials that only hide.

- **Relearning probe**: ``steps`` (2) fine-tuning steps on the relearn rows T of the audit
  (``rows.select_audit_rows``: identity and open questions on the first half of each forget person's
  training images; AdamW, lr 5e-4, batch 8, the audit's attacker), then the leak rate on a seeded
  subsample of V (their other images, ``forget_unseen`` included). The model is copied; it is not
  changed. The issue's measurements put the signal here: the retrained reference leaks 0.06 on V after
  2 steps, a PUBG champion that hides 0.31.
- **Membership probe**: the ROC AUC (``membership.roc_auc``) of the LOSS, ZLib, Min-K% and Min-K%++
  attacks at both of the audit's levels, on seeded subsamples: the forget rows on training images
  against the same people's ``forget_unseen`` images (image level) and against the holdout people's
  rows (person level, where the records have holdout people). ``auc`` is the image-level LOSS AUC;
  ``auc_<level>_<attack>`` each of the others.

Both run on the reference too (once per sweep, ``pipelines``), and the metrics are the gaps:
``audit_probe.relearn_excess`` = max(0, leak - leak_ref) and ``audit_probe.auc_gap`` = the largest
|AUC - AUC_ref| over the attacks and levels (two-sided, as the audit; a PUBG champion that hides
shows it most at person level under Min-K%++). They are a screen, not the audit: the full audit
(``unlearn audit``, ``unlearn sweep --audit``) still decides, at every step count, level and attack.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from unlearn_core.audit import measure, membership
from unlearn_core.audit.relearn import relearn
from unlearn_core.audit.rows import Row, select_audit_rows

PREFIX = "audit_probe."


@dataclass(frozen=True)
class ProbeSettings:
    steps: int = 2
    lr: float = 5e-4
    batch: int = 8
    seed: int = 0
    max_leak_rows: int = 48
    max_member_rows: int = 96
    person_level: bool = True  # also forget vs holdout people, where the records have them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sample(rows: Sequence[Row], n: int, seed: str) -> list[Row]:
    rows = sorted(rows, key=lambda r: r["sample_id"])
    return list(rows) if len(rows) <= n else random.Random(seed).sample(rows, n)


def probe_rows(shard_rows: Sequence[Row], settings: ProbeSettings | None = None) -> dict[str, list[Row]]:
    """The probe's row groups from every shard row: ``train`` (T), ``leak`` (V, subsampled), ``member``
    and ``unseen`` (subsampled)."""
    s = settings or ProbeSettings()
    rows = select_audit_rows(shard_rows, seed=s.seed)
    if not rows.unseen:
        raise ValueError(
            "the audit probe needs forget_unseen rows of the forget tasks (image-level membership)"
        )
    return {
        "train": list(rows.relearn_train),
        "leak": _sample(rows.relearn_leak, s.max_leak_rows, f"{s.seed}/probe-leak"),
        "member": _sample(rows.member, s.max_member_rows, f"{s.seed}/probe-member"),
        "unseen": _sample(rows.unseen, s.max_member_rows, f"{s.seed}/probe-unseen"),
        "holdout": _sample(rows.holdout, s.max_member_rows, f"{s.seed}/probe-holdout")
        if s.person_level
        else [],
    }


# the audit's attacks that need no second model (its "reference" attack needs the reference's losses)
ATTACKS = tuple(a for a in membership.ATTACKS if a != "reference")


def membership_aucs(model: nn.Module, processor: Any, rows: Mapping[str, Sequence[Row]]) -> dict[str, float]:
    """``auc`` (image-level LOSS) and ``auc_<level>_<attack>`` for every attack and level the rows allow."""
    member, unseen, holdout = rows["member"], rows["unseen"], rows.get("holdout", [])
    every = [*member, *unseen, *holdout]
    scores = membership.attack_scores(membership.token_stats(model, processor, every), every)
    n, m = len(member), len(member) + len(unseen)
    out: dict[str, float] = {}
    for attack in ATTACKS:
        s = scores[attack]
        out[f"auc_image_{attack}"] = membership.roc_auc(s[:n], s[n:m])
        if holdout:
            out[f"auc_person_{attack}"] = membership.roc_auc(s[:n], s[m:])
    out["auc"] = out["auc_image_loss"]
    return out


def probe_figures(
    model: nn.Module, processor: Any, rows: Mapping[str, Sequence[Row]], settings: ProbeSettings | None = None
) -> dict[str, float]:
    """``relearn_leak`` and ``auc`` of ``model`` (left as it was)."""
    s = settings or ProbeSettings()
    aucs = membership_aucs(model, processor, rows)
    figures, _ = relearn(
        model,
        processor,
        rows["train"],
        checkpoints=(s.steps,),
        measure=lambda m: {
            "leak": measure.leak_rate(rows["leak"], measure.answers(m, processor, rows["leak"]))
        },
        lr=s.lr,
        batch_size=s.batch,
        seed=s.seed,
        measure_start=False,
    )
    return {"relearn_leak": float(figures[s.steps]["leak"]), **aucs}


def probe_metrics(figures: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """The ``audit_probe.*`` metrics of a model's figures against the reference's: ``auc_gap`` is the
    largest |AUC - AUC_ref| over every attack and level both sides have (``auc_gap_image`` /
    ``auc_gap_person`` per level)."""
    gaps = {k: abs(v - reference[k]) for k, v in figures.items() if k.startswith("auc") and k in reference}
    by_level = {
        level: max(g for k, g in gaps.items() if k.startswith(f"auc_{level}_"))
        for level in ("image", "person")
        if any(k.startswith(f"auc_{level}_") for k in gaps)
    }
    return {
        f"{PREFIX}relearn_leak": figures["relearn_leak"],
        f"{PREFIX}relearn_leak_ref": reference["relearn_leak"],
        f"{PREFIX}relearn_excess": max(0.0, figures["relearn_leak"] - reference["relearn_leak"]),
        f"{PREFIX}auc": figures["auc"],
        f"{PREFIX}auc_ref": reference["auc"],
        f"{PREFIX}auc_gap": max(gaps.values()),
        **{f"{PREFIX}auc_gap_{level}": gap for level, gap in by_level.items()},
    }


def run_probe(model: nn.Module, processor: Any, payload: Mapping[str, Any]) -> dict[str, float]:
    """The probe as a training worker runs it: ``payload`` = {"rows", "settings", "reference"} (plain
    data, built by the pipeline)."""
    settings = ProbeSettings(**payload["settings"])
    return probe_metrics(probe_figures(model, processor, payload["rows"], settings), payload["reference"])
