"""Training progress: one readable line per report, shown by the driver's console.

Ray's own worker logs print the whole ``TrainingReport`` object per report; this callback shows what a
user watches instead: step, share done, loss, speed, time left, and the evaluation metrics when a
report carries them. The callback runs on the Ray Train controller (an actor, possibly on another
node): in a CLI process it sends each report to a small inbox actor that the driver polls and turns
into one progress display (``training_progress``); elsewhere (a Tune trial, library use) it prints.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback

from pipelines import console

# Metrics shown when an intermediate evaluation report carries them (the rest go to MLflow only).
SHOWN_EVAL_METRICS = (
    "forget.leak_rate",
    "forget_unseen.leak_rate",
    "retain.vqa_acc",
    "quality.informativeness",
)


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


def progress_note(metrics: dict[str, Any], total: int) -> str:
    """:func:`format_progress` without the label and step count (a progress display shows those):
    ``loss 0.412 | 4.10 steps/s, 15 s left``."""
    line = format_progress("", int(metrics.get("step", 0)), total, metrics)
    return line.split(") ", 1)[1] if ") " in line.split(" | ")[0] else line.partition(" | ")[2]


@ray.remote(num_cpus=0)
class ProgressInbox:
    """Reports from the Train controller wait here until the driver takes them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def put(self, metrics: dict[str, Any]) -> None:
        self.items.append(metrics)

    def take(self) -> list[dict[str, Any]]:
        items, self.items = self.items, []
        return items


class ProgressCallback(UserCallback):
    """Sends rank 0's reports to ``inbox`` (fire and forget), or prints :func:`format_progress`."""

    def __init__(self, label: str, total_steps: int, inbox: Any = None) -> None:
        self.label = label
        self.total_steps = total_steps
        self.inbox = inbox

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics or "step" not in metrics[0]:
            return
        if self.inbox is not None:
            shown = {k: v for k, v in metrics[0].items() if isinstance(v, int | float)}
            self.inbox.put.remote(shown)
        else:
            print(
                format_progress(self.label, int(metrics[0]["step"]), self.total_steps, metrics[0]), flush=True
            )


POLL_S = 0.5


@contextmanager
def training_progress(label: str, total_steps: int) -> Iterator[Any]:
    """Yields the inbox to give :class:`ProgressCallback` (None without an active console); while the
    run lasts, a driver thread moves its reports into one progress display."""
    if console.active() is None:
        yield None
        return
    inbox = ProgressInbox.remote()
    stop = threading.Event()
    with console.progress(label, total_steps, "steps") as bar:

        def drain() -> None:
            for m in ray.get(inbox.take.remote()):
                bar.update(int(m["step"]), progress_note(m, total_steps))

        def poll() -> None:
            while not stop.wait(POLL_S):
                drain()

        thread = threading.Thread(target=poll, name="training-progress", daemon=True)
        thread.start()
        try:
            yield inbox
        finally:
            stop.set()
            thread.join()
            try:
                drain()
            finally:
                ray.kill(inbox)


class SweepProgress(tune.Callback):
    """Runs in the Tune driver: one progress display over the sweep's trials, and a line per trial
    that ends (its status, step and objective)."""

    def __init__(self, total_trials: int, objective: str = "objective") -> None:
        self.total, self.objective = total_trials, objective
        self.finished = 0
        self._stack: ExitStack | None = None
        self._bar: Any = None

    def setup(self, **info: Any) -> None:
        self._stack = ExitStack()
        self._bar = self._stack.enter_context(console.progress("sweep", self.total, "trials"))

    def _show(self, note: str) -> None:
        if self._bar is not None:
            self._bar.update(self.finished, note)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._show(f"{trial.trial_id} step {result.get('step', '?')}" + _objective(result, self.objective))

    def _ended(self, trial: Any, status: str) -> None:
        self.finished += 1
        result = trial.last_result or {}
        console.say(
            f"trial {trial.trial_id}: {status} at step {result.get('step', '?')}"
            + _objective(result, self.objective)
        )
        self._show(f"{trial.trial_id} {status}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "finished" if (trial.last_result or {}).get("final") == 1 else "stopped early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = self._bar = None


def _objective(result: dict, key: str) -> str:
    value = result.get(key)
    return f", {key} {value:.4g}" if isinstance(value, int | float) else ""


def sweep_callbacks(total_trials: int) -> list[Any]:
    """``[SweepProgress]`` in a CLI process (a console is active), else none."""
    return [SweepProgress(total_trials)] if console.active() is not None else []
