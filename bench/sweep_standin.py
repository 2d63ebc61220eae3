"""The stand-in training worker of bench/sweep_scale.py: a sweep trial without its model.

Everything but the model is the project's: ``unlearn_core.training.loop.run_loop`` decides when to
report, evaluate and checkpoint (so a trial of N steps makes exactly the reports a real trial of N
steps makes), its checkpoints go through the trial's session (copied into the run folder), the last
checkpoint holds a real model folder (the starting model's files, as a trained model's would be) and
the final evaluation's outputs, and every metric is scored by ``unlearn_core.eval.score`` from
outputs. Only the numbers are drawn instead of computed: each step's statistics (the names the real
method reports, given as ``step_keys``) and each evaluation's outputs (every answer right with a
probability that falls with the learning rate and the steps, the way unlearning makes a model
forget), seeded by the trial's config so a trial run twice reports the same values.

``fail_one_in``: trials whose seed falls on it raise mid-way (a FAILED trial, as a real error would).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from pipelines.train.trainer import FINAL_OUTPUTS, WorkerSpec
from unlearn_core.config import RunConfig
from unlearn_core.data.schema import MC_TASKS
from unlearn_core.eval.metrics import answer_index
from unlearn_core.eval.protocols import get_protocol
from unlearn_core.eval.score import score_outputs
from unlearn_core.training.loop import WorkerContext, load_checkpoint, run_loop


def _seed(cfg: RunConfig) -> int:
    key = json.dumps([cfg.train.lr, cfg.train.steps, cfg.train.seed, sorted(cfg.method.params.items())])
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


def drawn_outputs(rows: list[dict[str, Any]], knows: float, rng: random.Random) -> dict[str, dict[str, Any]]:
    """Outputs in the synthetic protocol's form: option scores for multiple choice, generations else;
    each row answered right with probability ``knows``."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        right = rng.random() < knows
        options = list(row.get("options") or [])
        if row.get("task") in MC_TASKS and options:
            good = answer_index(str(row.get("answer", "")), options)
            pick = good if right and good is not None else rng.randrange(len(options))
            out[row["sample_id"]] = {
                "option_scores": [1.0 if i == pick else 0.0 for i in range(len(options))]
            }
        else:
            out[row["sample_id"]] = {"generation": str(row.get("answer", "")) if right else "I am not sure."}
    return out


def standin_loop(
    job_dict: dict[str, Any],
    session: Any,
    *,
    step_keys: tuple[str, ...] = ("loss", "grad_norm"),
    fail_one_in: int = 0,
) -> None:
    """A ``trainer.WorkerLoop``: the project's loop over a one-weight model, with drawn numbers."""
    job = WorkerSpec(**job_dict)
    cfg = RunConfig.model_validate(job.cfg)
    seed = _seed(cfg)
    rng = random.Random(seed)
    protocol = get_protocol(job.final_eval_protocol)
    if protocol.name != "synthetic":
        raise ValueError(f"the stand-in draws outputs in the synthetic protocol's form, not {protocol.name}")
    fails_at = cfg.train.steps // 2 if fail_one_in and seed % fail_one_in == 0 else None
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    ctx = WorkerContext(rank=0, world_size=1, device=torch.device("cpu"))

    def knows(step: int) -> float:
        # Forgetting speed grows with lr: about 0.9 right at step 0, falling towards 0.1.
        return 0.1 + 0.8 * math.exp(-step * cfg.train.lr * 200.0)

    state = {"step": 0}

    def step_fn(step: int) -> dict[str, float]:
        state["step"] = step + 1
        if fails_at is not None and step + 1 == fails_at:
            raise RuntimeError(f"stand-in failure at step {step + 1} (fail_one_in={fail_one_in})")
        return {k: rng.uniform(0.5, 2.0) for k in step_keys}

    def evaluate() -> dict[str, float]:
        outputs = drawn_outputs(job.eval_records or [], knows(state["step"]), rng)
        return score_outputs(job.eval_records or [], outputs, protocol)["metrics"]

    def finalize(folder: Path) -> None:
        shutil.copytree(job.init_model, folder, dirs_exist_ok=True)

    def final_eval(folder: Path) -> dict[str, float]:
        rows = job.final_eval_records or []
        outputs = drawn_outputs(rows, knows(state["step"]), rng)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FINAL_OUTPUTS).write_text(json.dumps({"protocol": protocol.name, "outputs": outputs}))
        return score_outputs(rows, outputs, protocol)["metrics"]

    with ExitStack() as stack:
        resume = session.resume_folder(stack)
        start = load_checkpoint(Path(resume), model, optimizer) if resume is not None else 0
    run_loop(
        cfg=cfg.train,
        ctx=ctx,
        model=model,
        optimizer=optimizer,
        step_fn=step_fn,
        report=session.report,
        start_step=start,
        evaluate=evaluate if job.eval_records else None,
        finalize=finalize,
        final_eval=final_eval if job.final_eval_records else None,
    )
