"""Each unlearning method's step time relative to GA, in-process, with the real method objects.

Batches are real: the forget stream of the PUBG teacher cache (the forget shards plus the
``guide_`` / ``teacher_`` views and the cached top-k) and the retain stream, read through the same
``stream_dataset`` the pipeline uses and collated by ``pipelines.train.collate_shard_batch`` with
every view a method may need (``""``, ``idk_``, ``rand_``, ``guide_``, ``teacher_``). All methods
see the same batches. Each method gets its own copy of the vanilla model, an AdamW like the
trainer's, and (where needed) a frozen reference copy; a step is ``method.train_step(...)``.

Methods are interleaved step by step (one step of each method in turn, the starting method rotated)
so load spikes on the shared machine hit all of them alike; a repeat's figure per method is the
median of its ``STEPS`` step times and the ratio to GA is taken per repeat. Collation is outside
the timed region.

Run: ``.venv/bin/python bench/method_cost.py`` (``BENCH_QUICK=1``: fewer repeats).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import common
import torch

from pipelines.shards import stream_dataset
from pipelines.train import collate_shard_batch
from unlearn_core.config import ModelConfig
from unlearn_core.methods import get_method
from unlearn_core.models.loading import load_model_and_processor
from unlearn_core.models.lora import apply_lora
from unlearn_core.training.worker import apply_method_needs

THREADS = 2
BATCH = 32
N_BATCHES = 4
STEPS = 4 if common.QUICK else 8
REPEATS = 3 if common.QUICK else 5
TARGET = 1.3  # cached PUBG <= 1.3x GA
ALL_VIEWS = ("", "idk_", "rand_", "guide_", "teacher_")
# Reference for the cost of the cached top-k KL itself: a plain NLL step on the same guide_ view
# (the ``reject`` method with its view switched to ``guide_`` and no retain term).
GUIDE_NLL = "reference: NLL on the guide_ view (1 pass)"

# (label, method, params, forward+backward passes per step, reference forwards per step), in passes of
# one view of a full batch (tamper resistance's attack and held-out passes run on half batches)
VARIANTS: list[tuple[str, str, dict[str, Any], float, float]] = [
    ("ga", "ga", {}, 1, 0),
    ("grad_diff", "grad_diff", {}, 2, 0),
    ("kl", "kl", {}, 2, 1),
    ("npo", "npo", {}, 2, 1),
    ("reject", "reject", {}, 2, 0),
    ("random", "random", {}, 2, 0),
    ("mmunlearner (mask both)", "mmunlearner", {"mask": "both", "forget_every": 1}, 2, 0),
    ("pubg cached, default (w_ret=1)", "pubg", {"w_ret": 1.0}, 3, 0),
    ("pubg cached, w_ret=0", "pubg", {"w_ret": 0.0}, 2, 0),
    ("pubg cached, KL only (w_ga=0, w_ret=0)", "pubg", {"w_ga": 0.0, "w_ret": 0.0}, 1, 0),
    (GUIDE_NLL, "reject", {"alpha": 0.0}, 1, 0),
    ("pubg live teacher, w_ret=1", "pubg", {"teacher_cache": False, "w_ret": 1.0}, 3, 1),
    ("pubg live teacher, w_ret=0", "pubg", {"teacher_cache": False, "w_ret": 0.0}, 2, 1),
    # open-unlearning's set, at their defaults (docs/methods.md); rmu trains its layers only
    ("rmu", "rmu", {}, 2, 1),
    ("idk_dpo", "idk_dpo", {}, 3, 2),
    ("undial", "undial", {}, 1, 1),
    ("wga", "wga", {}, 2, 0),
    ("satimp", "satimp", {}, 2, 0),
    ("ceu", "ceu", {}, 1, 0),
    # relearning-resistant forget updates (unlearn_core/methods/robust.py); the forget term of npo is one
    # pass (+ its reference forward), of default pubg two (plain and guide_ views)
    ("npo + SAM", "npo", {"sam_rho": 0.05}, 3, 2),
    ("npo + randomised smoothing (3 draws)", "npo", {"rs_sigma": 1e-3, "rs_samples": 3}, 4, 3),
    ("npo + tamper resistance (K=2)", "npo", {"tar_steps": 2}, 4, 2),
    ("npo + SAM + tamper resistance (K=2)", "npo", {"sam_rho": 0.05, "tar_steps": 2}, 5, 3),
    ("pubg cached + SAM (w_ret=1)", "pubg", {"w_ret": 1.0, "sam_rho": 0.05}, 5, 0),
    ("pubg cached + tamper resistance (K=2, w_ret=1)", "pubg", {"w_ret": 1.0, "tar_steps": 2}, 6, 0),
]
# each robust variant against the same method without the option
ROBUST_BASE = {
    "npo + SAM": "npo",
    "npo + randomised smoothing (3 draws)": "npo",
    "npo + tamper resistance (K=2)": "npo",
    "npo + SAM + tamper resistance (K=2)": "npo",
    "pubg cached + SAM (w_ret=1)": "pubg cached, default (w_ret=1)",
    "pubg cached + tamper resistance (K=2, w_ret=1)": "pubg cached, default (w_ret=1)",
}


def real_batches(inp: common.Inputs, processor: Any) -> tuple[list[dict], list[dict]]:
    forget_ds = stream_dataset(inp.shards, "forget", forget_dir=inp.teacher)
    retain_ds = stream_dataset(inp.shards, "retain")
    out = []
    for ds in (forget_ds, retain_ds):
        batches = []
        for b in ds.iter_batches(
            batch_size=BATCH,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=256,
            local_shuffle_seed=0,
        ):
            batches.append(collate_shard_batch(b, processor, ALL_VIEWS if ds is forget_ds else ("",)))
            if len(batches) == N_BATCHES:
                break
        out.append(batches)
    return out[0], out[1]


def ensure_mask(inp: common.Inputs) -> str:
    """The MMUnlearner mask of the vanilla model (``pipelines.train.mask.compute_mask``), built once."""
    from pipelines.train.mask import compute_mask
    from unlearn_core.config import RunConfig

    path = common.BENCH_DIR / "masks" / "vanilla-both-g1.safetensors"
    if not path.exists():
        print("computing the MMUnlearner mask once (bench/mask_cost.py times this) ...", flush=True)
        compute_mask(RunConfig().model_dump(), str(inp.vanilla), str(inp.shards), str(path), modules="both")
    return str(path)


class Runner:
    def __init__(self, label: str, name: str, params: dict[str, Any], base: torch.nn.Module) -> None:
        self.label = label
        self.method = get_method(name, params)
        if label == GUIDE_NLL:
            self.method.prefix = "guide_"
        self.model = copy.deepcopy(base).train()
        apply_method_needs(self.model, self.method)  # the trainable parameters a worker would train
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.ref = None
        if self.method.needs_ref:
            self.ref = copy.deepcopy(base).eval()
            for p in self.ref.parameters():
                p.requires_grad_(False)
        self.step_no = 0

    def step(self, forget: dict, retain: dict) -> None:
        self.method.train_step(
            self.model,
            self.opt,
            forget,
            retain if self.method.needs_retain else None,
            self.ref,
            self.step_no,
            max_grad_norm=1.0,
        )
        self.step_no += 1


def main() -> None:
    torch.set_num_threads(THREADS)
    common.header("bench/method_cost.py: step time of each method relative to GA (in-process)")
    inp = common.inputs()
    common.start_local_ray(2)
    model_cfg = ModelConfig(spec=str(inp.vanilla))
    base, processor = load_model_and_processor(str(inp.vanilla), model_cfg)
    # the worker's trainable set (dead vision weights frozen), the one the mask was computed for
    base = apply_lora(base, model_cfg)
    forget, retain = real_batches(inp, processor)
    f0 = forget[0]
    print(
        f"forget batch: {BATCH} rows; shapes "
        + ", ".join(
            f"{k}={tuple(v.shape)}"
            for k, v in f0.items()
            if k.endswith("input_ids") or k.startswith("teacher_topk")
        )
    )
    print(f"retain batch: input_ids={tuple(retain[0]['input_ids'].shape)}")
    mask_path = ensure_mask(inp)
    runners = []
    for label, name, params, _, _ in VARIANTS:
        if get_method(name, params).mask_spec() is not None:
            params = {**params, "mask_path": mask_path}
        r = Runner(label, name, params, base)
        r.step(forget[0], retain[0])  # warm-up (lazy mask load, optimizer state allocation)
        runners.append(r)
    # Finest interleaving: one step of every method in turn (starting point rotated), so load spikes
    # hit all methods alike; a repeat's figure per method is the median of its STEPS step times.
    times: dict[str, list[float]] = {r.label: [] for r in runners}
    for rep in range(REPEATS):
        common.load(f"repeat {rep}")
        per_step: dict[str, list[float]] = {r.label: [] for r in runners}
        for s in range(STEPS):
            k = (rep * STEPS + s) % len(runners)
            for r in runners[k:] + runners[:k]:
                t0 = time.perf_counter()
                r.step(forget[s % N_BATCHES], retain[s % N_BATCHES])
                per_step[r.label].append(time.perf_counter() - t0)
        for label, ts in per_step.items():
            times[label].append(statistics.median(ts))
        print(f"  repeat {rep}: GA {1000 * times['ga'][-1]:.0f} ms/step", flush=True)
    rows = []
    results: dict[str, Any] = {
        "config": {"batch": BATCH, "steps": STEPS, "repeats": REPEATS, "threads": THREADS}
    }
    for label, _, _, passes, ref_fw in VARIANTS:
        ms = common.Stats([1000 * t for t in times[label]])
        ratio = common.Stats([t / g for t, g in zip(times[label], times["ga"], strict=True)])
        per_pass = common.Stats([x / passes for x in ratio.values])
        verdict = ""
        if label.startswith("pubg cached"):
            verdict = "met" if ratio.median <= TARGET else "MISSED"
        rows.append(
            [
                label,
                ms.short(),
                ratio.short(2),
                f"{passes:g} + {ref_fw:g} ref fwd",
                per_pass.short(2),
                verdict,
            ]
        )
        results[label] = {
            "ms_per_step": ms.as_dict(),
            "ratio_to_ga": ratio.as_dict(),
            "passes": passes,
            "ref_forwards": ref_fw,
        }
    print(
        f"\nms/step and ratio to GA: median [min, max] over {REPEATS} repeats (each the median of {STEPS} "
        f"interleaved steps, batch {BATCH})"
    )
    results["table"] = common.table(
        ["method", "ms/step", "x GA", "fwd+bwd passes/step", "x GA per pass", "target cached PUBG <= 1.3x"],
        rows,
    )
    kl_only = "pubg cached, KL only (w_ga=0, w_ret=0)"
    kl_cost = common.Stats([a / b for a, b in zip(times[kl_only], times[GUIDE_NLL], strict=True)])
    print(
        f"cached top-k KL step / NLL step on the same guide_ view: {kl_cost.short(3)} (the KL loss itself); "
        f"guide_ view {tuple(f0['guide_input_ids'].shape)} vs GA's plain view {tuple(f0['input_ids'].shape)}"
    )
    results["kl_over_guide_nll"] = kl_cost.as_dict()
    robust_rows = []
    for label, base_label in ROBUST_BASE.items():
        extra = common.Stats([a / b for a, b in zip(times[label], times[base_label], strict=True)])
        robust_rows.append([label, base_label, extra.short(3)])
        results[label]["ratio_to_plain"] = extra.as_dict()
    print("\nrobust forget updates: step time over the same method without the option")
    results["robust_table"] = common.table(["variant", "plain", "x plain"], robust_rows)
    print(common.load_summary())
    common.save("method_cost", results)


if __name__ == "__main__":
    main()
