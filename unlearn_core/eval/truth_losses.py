"""CLEAR's truth-ratio inputs computed with a loaded model: the mean loss per answer token of the
paraphrased caption, of each perturbed caption and of the caption itself, given the image and the
caption question (``mm/eval.py`` ``eval_perturbation_ratio`` / ``get_all_evals``).

The captions come from a row's ``answer_variants`` JSON (``{"paraphrased", "perturbed": [...],
"caption"}``), which the CLEAR adapter fills on the ``forgetNN_perturbed`` / ``retain_perturbed`` rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from unlearn_core.data.adapters.clear import CAPTION_QUESTION


def variant_captions(row: Mapping[str, Any]) -> tuple[str, list[str], str | None] | None:
    """(paraphrased, perturbed captions, caption or None) of a row, or None when it has no usable pair."""
    raw = row.get("answer_variants")
    variants = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
    paraphrased, perturbed = variants.get("paraphrased"), variants.get("perturbed")
    if not isinstance(paraphrased, str) or not isinstance(perturbed, list) or not perturbed:
        return None
    if not all(isinstance(p, str) for p in perturbed):
        return None
    caption = variants.get("caption")
    return paraphrased, list(perturbed), caption if isinstance(caption, str) else None


def truth_losses(
    model: nn.Module, processor: Any, row: Mapping[str, Any], image: Any
) -> dict[str, Any] | None:
    """``{"paraphrased_loss", "perturbed_losses", "caption_loss"?}`` for one row (one forward batch), or
    None when the row carries no paraphrased + perturbed captions."""
    from unlearn_core.models.generate import answer_mean_nll

    captions = variant_captions(row)
    if captions is None:
        return None
    paraphrased, perturbed, caption = captions
    texts = [paraphrased, *perturbed, *([caption] if caption is not None else [])]
    losses = answer_mean_nll(model, processor, CAPTION_QUESTION, image, texts)
    out: dict[str, Any] = {"paraphrased_loss": losses[0], "perturbed_losses": losses[1 : 1 + len(perturbed)]}
    if caption is not None:
        out["caption_loss"] = losses[-1]
    return out
