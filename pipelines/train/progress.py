"""One readable progress line per training report, printed by the Ray Train controller.

Ray's own worker logs print the whole ``TrainingReport`` object per report; this callback prints what a
user watches instead: step, share done, loss, speed, time left, and the evaluation metrics when a
report carries them.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback

# Metrics shown when an intermediate evaluation report carries them (the rest go to MLflow only).
SHOWN_EVAL_METRICS = ("forget.leak_rate", "forget_unseen.leak_rate", "retain.vqa_acc", "quality.informativeness")


def format_progress(label: str, step: int, total: int, metrics: dict[str, Any]) -> str:
    """``[label] step 40/100 (40%) loss 0.412 | 4.10 steps/s, 15 s left | forget.leak_rate 0.250``
    (the speed is the worker's own ``steps_per_s`` since it started or resumed)."""
    parts = [f"[{label}] step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
    if isinstance(metrics.get("loss"), int | float):
        parts[0] += f" loss {metrics['loss']:.4g}"
    rate = metrics.get("steps_per_s")
    if isinstance(rate, int | float) and rate > 0:
        parts.append(f"{rate:.2f} steps/s, {max(total - step, 0) / rate:.0f} s left")
    shown = [f"{k} {metrics[k]:.3f}" for k in SHOWN_EVAL_METRICS if isinstance(metrics.get(k), int | float)]
    if shown:
        parts.append(", ".join(shown))
    return " | ".join(parts)


class ProgressCallback(UserCallback):
    """Prints :func:`format_progress` for rank 0's reports (runs on the controller, shown by the driver)."""

    def __init__(self, label: str, total_steps: int) -> None:
        self.label = label
        self.total_steps = total_steps

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics and "step" in metrics[0]:
            print(format_progress(self.label, int(metrics[0]["step"]), self.total_steps, metrics[0]), flush=True)
