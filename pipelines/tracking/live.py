"""Live metrics: a Ray Train controller callback that logs every report to an MLflow run as it arrives."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.train import UserCallback


class MlflowReportCallback(UserCallback):
    """Ray Train controller callback: logs rank 0's reported metrics to an MLflow run as they arrive.

    Each step is logged once. After a worker failure Ray Train restarts from the last checkpoint
    and re-runs (and re-reports) the steps after it; MLflow keeps every point of a metric's history
    and cannot replace one, so a report whose step is not past the last one logged is skipped (the
    history keeps the value first measured for that step).

    A tracking server that is briefly unreachable does not stop training: an ``http(s)`` server that
    refuses connections is detected with a short TCP probe (MLflow's own client would retry with
    backoff for minutes while the controller waits), failed values stay in a buffer with a warning,
    and are retried on the next report. The callback runs on the controller actor (a copy of the
    driver's object, on the driver's node), so values still unsent when training ends are handed to
    the driver through a spool file; the driver's ``flush()`` sends them or says how many were lost.
    """

    def __init__(
        self, tracking_uri: str, run_id: str, prefix: str = "train/", probe_timeout_s: float = 3.0
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.prefix = prefix
        self.probe_timeout_s = probe_timeout_s
        self._pending: list[tuple[str, float, int]] = []
        self._last_step: int | None = None
        self._owner_pid = os.getpid()
        self._spool = Path(tempfile.gettempdir()) / f"mlflow-pending-{run_id}-{uuid.uuid4().hex[:8]}.json"

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        step = int(m.get("step", 0))
        if "step" in m:
            if self._last_step is not None and step <= self._last_step:
                return  # re-run after a restart from a checkpoint: this step is already logged
            self._last_step = step
        for k, v in m.items():
            if k != "step" and isinstance(v, int | float):
                self._pending.append((self.metric_name(k), float(v), step))
        self._flush(final=False)

    def metric_name(self, key: str) -> str:
        """``loss`` -> ``train/loss``; an in-training evaluation ``forget.leak_rate`` -> ``eval/forget.leak_rate``
        (the run's final evaluation keeps the bare name); a name with a ``/`` is kept as it is."""
        if "/" in key:
            return key
        return f"eval/{key}" if "." in key else f"{self.prefix}{key}"

    def flush(self) -> bool:
        """Send what is still buffered (call once training is over); False if values were lost."""
        if os.getpid() == self._owner_pid and self._spool.exists():
            try:
                self._pending.extend(tuple(x) for x in json.loads(self._spool.read_text()))
            finally:
                self._spool.unlink(missing_ok=True)
        return self._flush(final=True)

    def _flush(self, final: bool) -> bool:
        if not self._pending:
            return True
        from mlflow.entities import Metric

        try:
            self._probe()
            client = MlflowClient(self.tracking_uri)
            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, s) for k, v, s in self._pending]
            for i in range(0, len(batch), 500):
                client.log_batch(self.run_id, metrics=batch[i : i + 500])
                del self._pending[: len(batch[i : i + 500])]
            self._spool.unlink(missing_ok=True)
            return True
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not kill training
            why = f"{type(exc).__name__}: {exc}"
            if final:
                print(
                    f"WARNING: MLflow still unreachable at {self.tracking_uri} at the end of training ({why}); "
                    f"{len(self._pending)} metric values were NOT logged to MLflow run {self.run_id}",
                    file=sys.stderr,
                )
            else:
                print(
                    f"WARNING: MLflow unreachable at {self.tracking_uri} ({why}); {len(self._pending)} metric "
                    "values buffered, will retry on the next report and at the end of training",
                    file=sys.stderr,
                )
                if os.getpid() != self._owner_pid:  # on the controller: keep them for the driver
                    try:
                        tmp = self._spool.with_suffix(".tmp")
                        tmp.write_text(json.dumps(self._pending))
                        tmp.replace(self._spool)
                    except OSError as err:
                        print(
                            f"WARNING: could not spool unsent metrics to {self._spool}: {err}",
                            file=sys.stderr,
                        )
            return False

    def _probe(self) -> None:
        """Fail fast when an http(s) tracking server does not accept connections."""
        url = urllib.parse.urlparse(self.tracking_uri)
        if url.scheme in ("http", "https") and url.hostname:
            port = url.port or (443 if url.scheme == "https" else 80)
            socket.create_connection((url.hostname, port), timeout=self.probe_timeout_s).close()
