"""The Ray Train callbacks of a sweep trial: live curves to the trial's MLflow run, in-training
evaluations to Tune (ASHA decides on them).

They run on the Ray Train controller, which imports this module to unpickle them: it stays light (no
torch, no transformers), so a trial's controller starts in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray import tune
from ray.train import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

from pipelines.sweep.tune_config import OBJECTIVE
from pipelines.tracking.live import MlflowReportCallback
from unlearn_core.config import ConfigError
from unlearn_core.search_space import objective_value


class LiveCurves(MlflowReportCallback):
    """Train reports -> the child run: ``train/<key>`` for training, ``eval/<metric>`` for evaluations."""

    def __init__(
        self, tracking_uri: str, run_id: str, objective: Any, logged_through: int | None = None
    ) -> None:
        super().__init__(tracking_uri, run_id, prefix="")
        self.objective = objective
        self.logged_through = logged_through  # a resumed trial's run already has the steps up to here

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        if self.logged_through is not None and int(m.get("step", 0)) <= self.logged_through:
            return
        out = {
            ("step" if k == "step" else f"eval/{k}" if "." in k else f"train/{k}"): v for k, v in m.items()
        }
        if (obj := _objective_of(self.objective, m)) is not None:
            out[f"eval/{OBJECTIVE}"] = obj
        super().after_report(run_context, [out], checkpoint)


class EvalToTune(UserCallback):
    """Forward only the in-training evaluations to Tune, with ``objective``, ``step`` and trial info.

    Under Ray Train the callback runs on the controller and hands them to the trial through Ray's
    Train-to-Tune queue (``TuneReportCallback``); an in-process trial (``in_process=True``) runs it in
    the trial function's own thread, which reports to Tune directly (and stops there when ASHA says so).
    """

    def __init__(self, objective: Any, extra: dict[str, Any], in_process: bool = False) -> None:
        self.objective = objective
        self.extra = extra
        self._bridge = None if in_process else TuneReportCallback()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        m = metrics[0] if metrics else {}
        evals = {k: v for k, v in m.items() if "." in k}
        obj = _objective_of(self.objective, m)
        if not evals or obj is None:
            return
        payload = {**evals, "step": m.get("step", 0.0), OBJECTIVE: obj, "final": 0, **self.extra}
        if self._bridge is None:
            tune.report(payload)
        else:
            self._bridge.after_report(run_context, [payload], None)


def _objective_of(objective: Any, metrics: Mapping[str, Any]) -> float | None:
    try:
        return objective_value(objective, metrics)
    except ConfigError:
        return None
