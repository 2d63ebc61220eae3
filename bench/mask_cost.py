"""MMUnlearner's saliency mask: its cost in forward-backward passes and seconds, relative to one
unlearning epoch over the forget stream.

The mask is ``pipelines.train.mask.compute_mask`` in-process (the function ``unlearn mask`` and
``unlearn run`` call, as a Ray task): load the model, read and collate the forget / preserve rows
(batch 16, at most 32 batches per set), per-element Fisher on the forget set and on each group's
preserve set (``modules=both``: vision and language), ratio mask, save. Passes are counted by
wrapping the ``nll`` the Fisher loop calls; the Fisher part is timed by wrapping
``compute_saliency_masks``.

One epoch = every row of the forget stream once at batch 32 (drop_last=False, as the trainer):
MMUnlearner does a masked ascent step on the forget batch and a descent step on a retain batch
each step (``forget_every=1``), i.e. 2 passes per step; GA's epoch (1 pass per step) is shown too.
Mask and epochs alternate in every repeat (same load).

Run: ``.venv/bin/python bench/mask_cost.py``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import common
import torch

import unlearn_core.methods.saliency as saliency
from pipelines.shards import rows_with_images
from pipelines.train.mask import _rows, compute_mask
from unlearn_core.config import ModelConfig, RunConfig
from unlearn_core.data.encode import collate
from unlearn_core.data.selection import in_stream
from unlearn_core.methods import get_method
from unlearn_core.models.loading import load_model_and_processor

THREADS = 2
BATCH = 32
REPEATS = 3


class Counted:
    """Counts the Fisher loop's forward-backward passes and times ``compute_saliency_masks``."""

    def __init__(self) -> None:
        self.passes = 0
        self.samples = 0
        self.fisher_s = 0.0
        self._nll = saliency.nll
        self._csm = saliency.compute_saliency_masks

    def __enter__(self) -> Counted:
        def nll(model, batch, prefix=""):
            self.passes += 1
            self.samples += int(batch[f"{prefix}input_ids"].shape[0])
            return self._nll(model, batch, prefix)

        def csm(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self._csm(*args, **kwargs)
            finally:
                self.fisher_s += time.perf_counter() - t0

        saliency.nll = nll
        saliency.compute_saliency_masks = csm
        return self

    def __exit__(self, *exc: Any) -> None:
        saliency.nll = self._nll
        saliency.compute_saliency_masks = self._csm


def epoch_batches(inp: common.Inputs, processor: Any) -> tuple[list[dict], list[dict]]:
    rows = _rows(inp.shards)
    forget = sorted(
        (r for r in rows if in_stream("forget", r["split"], r["task"])), key=lambda r: r["sample_id"]
    )
    retain = sorted(
        (r for r in rows if in_stream("retain", r["split"], r["task"])), key=lambda r: r["sample_id"]
    )
    fb = [collate(rows_with_images(forget[i : i + BATCH]), processor) for i in range(0, len(forget), BATCH)]
    rb = [
        collate(rows_with_images(retain[i * 97 % len(retain) :][:BATCH]), processor) for i in range(len(fb))
    ]
    return fb, rb


def run_epoch(
    name: str, params: dict[str, Any], base: torch.nn.Module, forget: list[dict], retain: list[dict]
) -> float:
    method = get_method(name, params)
    model = copy.deepcopy(base).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    method.train_step(model, opt, forget[0], retain[0], None, 0, max_grad_norm=1.0)  # warm-up, mask load
    t0 = time.perf_counter()
    for step, (f, r) in enumerate(zip(forget, retain, strict=True)):
        method.train_step(model, opt, f, r if method.needs_retain else None, None, step, max_grad_norm=1.0)
    return time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(THREADS)
    common.header("bench/mask_cost.py: MMUnlearner mask vs one unlearning epoch")
    inp = common.inputs()
    base, processor = load_model_and_processor(str(inp.vanilla), ModelConfig(spec=str(inp.vanilla)))
    forget, retain = epoch_batches(inp, processor)
    n_forget = sum(int(b["input_ids"].shape[0]) for b in forget)
    print(f"forget stream: {n_forget} rows = {len(forget)} steps of batch {BATCH}")
    out = common.BENCH_DIR / "masks" / "mask_cost-both.safetensors"
    cfg = RunConfig().model_dump()
    mask_s, fisher_s, mm_s, ga_s = [], [], [], []
    passes = samples = 0
    stats: dict[str, Any] = {}
    for r in range(REPEATS):
        common.load(f"compute_mask repeat {r}")
        with Counted() as c:
            t0 = time.perf_counter()
            stats = compute_mask(cfg, str(inp.vanilla), str(inp.shards), str(out), modules="both", gamma=1.0)
            mask_s.append(time.perf_counter() - t0)
        fisher_s.append(c.fisher_s)
        passes, samples = c.passes, c.samples
        common.load(f"mmunlearner epoch repeat {r}")
        mm_s.append(
            run_epoch(
                "mmunlearner",
                {"mask": "both", "mask_path": str(out), "forget_every": 1},
                base,
                forget,
                retain,
            )
        )
        common.load(f"ga epoch repeat {r}")
        ga_s.append(run_epoch("ga", {}, base, forget, retain))
        print(
            f"  repeat {r}: mask {mask_s[-1]:.1f} s (Fisher {fisher_s[-1]:.1f} s, {passes} passes), "
            f"MMUnlearner epoch {mm_s[-1]:.1f} s, GA epoch {ga_s[-1]:.1f} s",
            flush=True,
        )
    m, f, mm, ga = (common.Stats(x) for x in (mask_s, fisher_s, mm_s, ga_s))
    ratio_mm = common.Stats([a / b for a, b in zip(mask_s, mm_s, strict=True)])
    ratio_ga = common.Stats([a / b for a, b in zip(mask_s, ga_s, strict=True)])
    mm_passes, ga_passes = 2 * len(forget), len(forget)
    rows = [
        ["compute_mask (modules=both), total", f"{passes} (batch 16, {samples} samples)", m.short(), "", ""],
        ["  of which Fisher passes (compute_saliency_masks)", "", f.short(), "", ""],
        [
            f"MMUnlearner epoch ({len(forget)} steps)",
            f"{mm_passes} (batch {BATCH}, {2 * n_forget} samples)",
            mm.short(),
            f"{passes / mm_passes:.1f}x passes, {samples / (2 * n_forget):.1f}x samples",
            f"mask = {ratio_mm.short(2)}x epoch",
        ],
        [
            f"GA epoch ({len(forget)} steps)",
            f"{ga_passes} (batch {BATCH}, {n_forget} samples)",
            ga.short(),
            f"{passes / ga_passes:.1f}x passes, {samples / n_forget:.1f}x samples",
            f"mask = {ratio_ga.short(2)}x epoch",
        ],
    ]
    print(
        f"\nseconds: median [min, max] over {REPEATS} repeats; mask selected fraction {stats.get('selected_fraction')}"
    )
    table = common.table(
        ["work", "forward-backward passes", "seconds", "mask / epoch (work)", "mask / epoch (time)"], rows
    )
    print(common.load_summary())
    common.save(
        "mask_cost",
        {
            "passes": passes,
            "samples": samples,
            "mask_s": m.as_dict(),
            "fisher_s": f.as_dict(),
            "mm_epoch_s": mm.as_dict(),
            "ga_epoch_s": ga.as_dict(),
            "mask_over_mm_epoch": ratio_mm.as_dict(),
            "mask_over_ga_epoch": ratio_ga.as_dict(),
            "forget_rows": n_forget,
            "selected_fraction": stats.get("selected_fraction"),
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
