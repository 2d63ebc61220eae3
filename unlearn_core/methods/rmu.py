"""Representation Misdirection for Unlearning (RMU; Li et al. 2024, "The WMDP Benchmark", arXiv
2403.03218; open-unlearning ``src/trainer/unlearn/rmu.py``).

On the forget batch, push the output of one decoder layer toward a fixed random direction scaled by
the steering coefficient; on the retain batch, keep that output where the frozen model has it:

    L = mean_b (1/|A_b|) sum_{t in A_b} mean_d (h_theta(x_b)_t - c u)_d^2
      + alpha * mean_b (1/|A_b|) sum_{t in A_b} mean_d (h_theta(r_b)_t - h_ref(r_b)_t)_d^2

``h`` is the output of decoder layer ``layer`` of the language model, ``u`` a unit vector with
uniform [0, 1) entries before normalising (drawn once from ``direction_seed``, so every worker and a
resumed run steer toward the same one) and ``A_b`` the answer positions of row b. Only the
parameters ``trainable`` matches train (default: the decoder layers ``layer-2..layer``, WMDP's
three layers).

The VLM choice: a layer of the language model, at the answer positions (the states that emit the
answer tokens, as every loss here reads them), with the image in the prompt. The vision tower and
the language model's image-token positions see only the image (it comes before the question), so
they cannot tell "who is this?" from "what is she wearing?" about the same photo, and the retain
stream asks the second about the forget people's photos (captions, guided answers). The answer
positions attend to both the image and the question: steering them scrambles the recall of the
person from the image and leaves the image's description and the text-only questions by name
(retain stream) to the retain term.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from unlearn_core.method_params import RMUParams
from unlearn_core.methods.activations import layer_output
from unlearn_core.methods.base import LayerHook, UnlearnMethod
from unlearn_core.methods.losses import answer_mask


def steering_direction(dim: int, seed: int) -> Tensor:
    """The unit vector ``u`` (float32, CPU): uniform [0, 1) entries from ``seed``, normalised."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(dim, generator=g)
    return u / u.norm()


def activation_mse(acts: Tensor, target: Tensor, labels: Tensor) -> Tensor:
    """mean_b (1/|A_b|) sum_{t in A_b} mean_d (acts - target)^2 over the answer positions ``A_b``
    (the positions that predict an answer token); rows without one count as 0."""
    mask = answer_mask(labels)
    diff = (acts[:, :-1].float() - target[:, :-1].float()).pow(2).mean(-1)  # [B, T-1]
    per_row = (diff * mask).sum(1) / mask.sum(1).clamp_min(1)
    return per_row.mean()


class RMU(UnlearnMethod):
    name = "rmu"
    Params = RMUParams
    params: RMUParams
    needs_ref = True
    retain_weight = "alpha"
    reads_logits = False

    def __init__(self, params: BaseModel | None = None) -> None:
        super().__init__(params)
        self.needs_ref = self.needs_retain  # the frozen activations are the retain term's target

    def layer_hooks(self) -> tuple[LayerHook, ...]:
        return (LayerHook(self.params.layer, "layer"),)

    def trainable_regex(self) -> str:
        if self.params.trainable is not None:
            return self.params.trainable
        p = self.params.layer
        layers = "|".join(str(i) for i in range(max(0, p - 2), p + 1))
        return rf"(^|\.)language_model\.layers\.({layers})\."

    def resolved_params(self) -> dict[str, Any]:
        return {**super().resolved_params(), "trainable": self.trainable_regex()}

    def loss(
        self,
        model: nn.Module,
        forget: Mapping[str, Any],
        retain: Mapping[str, Any] | None,
        ref: nn.Module | None,
    ) -> tuple[Tensor, dict[str, float]]:
        p = self.params
        acts = layer_output(model, p.layer, forget)
        target = p.steering_coeff * steering_direction(acts.shape[-1], p.direction_seed).to(acts.device)
        forget_loss = activation_mse(acts, target.expand_as(acts), forget["labels"])
        stats = {"forget_steer_mse": float(forget_loss.detach())}
        loss = forget_loss
        if p.alpha > 0:
            retain = self._require_retain(retain)
            if ref is None:
                raise ValueError("rmu with alpha > 0 needs the frozen reference model (ref) but got None")
            with torch.no_grad():
                ref_acts = layer_output(ref, p.layer, retain)
            retain_loss = activation_mse(layer_output(model, p.layer, retain), ref_acts, retain["labels"])
            stats["retain_act_mse"] = float(retain_loss.detach())
            loss = loss + p.alpha * retain_loss
        return loss, stats
