"""Live metrics: a Ray Train controller callback that logs every report to an MLflow run as it arrives."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.train import UserCallback

# How long a job's final flush waits for a tracking server that is down when training ends (a restart
# takes ~30 s here; MLflow's own client retries a request for ~4 min before it raises).
OUTAGE_WAIT_S = 300.0


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

    Each value keeps the time it was reported as its MLflow timestamp, so a batch sent again after a
    failure that the server had in fact stored is the same rows, which the store does not add twice.

    ``background=True`` (a job that trains in the calling process: its reports come from the training
    loop itself): ``after_report`` only queues the values and a sender thread logs them, so a report
    never waits on MLflow; ``flush()`` waits for the queue to drain. On the Ray Train controller (a
    copy in another process) the callback always sends in place: the workers do not wait for it.
    ``outage_wait_s``: how long ``flush()`` keeps retrying a tracking server that is down at the end of
    training (a restart) before it gives up and counts the values lost.
    """

    RETRY_S = 2.0  # the background sender's pause between attempts while the server is unreachable

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        prefix: str = "train/",
        probe_timeout_s: float = 3.0,
        background: bool = False,
        outage_wait_s: float = 0.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.prefix = prefix
        self.probe_timeout_s = probe_timeout_s
        self.background = background
        self.outage_wait_s = outage_wait_s
        self._down = False  # the last attempt failed (a background sender warns once per outage)
        self._pending: list[tuple[str, float, int, int]] = []  # name, value, step, timestamp (ms)
        self._last_step: int | None = None
        self._owner_pid = os.getpid()
        self._spool = Path(tempfile.gettempdir()) / f"mlflow-pending-{run_id}-{uuid.uuid4().hex[:8]}.json"
        self._init_sender()

    def _init_sender(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._sender: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:  # to the Train controller: no lock, event or thread
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_wake", "_closing", "_sender")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_sender()

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        m = metrics[0]
        step = int(m.get("step", 0))
        if "step" in m:
            if self._last_step is not None and step <= self._last_step:
                return  # re-run after a restart from a checkpoint: this step is already logged
            self._last_step = step
        now = int(time.time() * 1000)
        values = [
            (self.metric_name(k), float(v), step, now)
            for k, v in m.items()
            if k != "step" and isinstance(v, int | float)
        ]
        with self._lock:
            self._pending.extend(values)
        if self.background and os.getpid() == self._owner_pid:
            if self._sender is None:
                self._sender = threading.Thread(target=self._send_loop, name="mlflow-live", daemon=True)
                self._sender.start()
            self._wake.set()
            return
        self._flush(final=False)

    def _send_loop(self) -> None:
        """The background sender: log what is queued whenever a report arrives; retry while down."""
        while True:
            self._wake.wait()
            self._wake.clear()
            if not self._flush(final=False, once=True) and not self._closing:
                self._wake.wait(self.RETRY_S)
                self._wake.set()  # try again (or at once when woken)
            if self._closing:
                return

    def metric_name(self, key: str) -> str:
        """``loss`` -> ``train/loss``; an in-training evaluation ``forget.leak_rate`` -> ``eval/forget.leak_rate``
        (the run's final evaluation keeps the bare name); a name with a ``/`` is kept as it is."""
        if "/" in key:
            return key
        return f"eval/{key}" if "." in key else f"{self.prefix}{key}"

    def flush(self) -> bool:
        """Send what is still buffered (call once training is over); False if values were lost."""
        if self._sender is not None:  # the background sender finishes its attempt, then stops
            self._closing = True
            self._wake.set()
            self._sender.join()
            self._sender = None
        if os.getpid() == self._owner_pid and self._spool.exists():
            try:
                with self._lock:
                    self._pending.extend(tuple(x) for x in json.loads(self._spool.read_text()))
            finally:
                self._spool.unlink(missing_ok=True)
        deadline = time.monotonic() + self.outage_wait_s
        while time.monotonic() < deadline:
            if self._flush(final=False, once=True):
                return True
            time.sleep(self.RETRY_S)
        return self._flush(final=True)

    def _flush(self, final: bool, once: bool = False) -> bool:
        """Send the buffer; on failure warn (``once``: only when the server was up before) and keep it."""
        with self._lock:
            todo = list(self._pending)
        if not todo:
            return True
        from mlflow.entities import Metric

        try:
            self._probe()
            client = MlflowClient(self.tracking_uri)
            for i in range(0, len(todo), 500):
                chunk = todo[i : i + 500]
                client.log_batch(self.run_id, metrics=[Metric(k, v, ts, s) for k, v, s, ts in chunk])
                with self._lock:
                    del self._pending[: len(chunk)]
            self._spool.unlink(missing_ok=True)
            if self._down:
                print(
                    f"MLflow reachable again at {self.tracking_uri}: buffered values delivered",
                    file=sys.stderr,
                )
            self._down = False
            return True
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not kill training
            with self._lock:
                left = len(self._pending)
            why = f"{type(exc).__name__}: {exc}"
            if final:
                print(
                    f"WARNING: MLflow still unreachable at {self.tracking_uri} at the end of training ({why}); "
                    f"{left} metric values were NOT logged to MLflow run {self.run_id}",
                    file=sys.stderr,
                )
            elif not (once and self._down):
                print(
                    f"WARNING: MLflow unreachable at {self.tracking_uri} ({why}); {left} metric "
                    "values buffered, will retry on the next report and at the end of training",
                    file=sys.stderr,
                )
            self._down = True
            if not final and os.getpid() != self._owner_pid:  # on the controller: keep them for the driver
                try:
                    tmp = self._spool.with_suffix(".tmp")
                    with self._lock:
                        tmp.write_text(json.dumps(self._pending))
                    tmp.replace(self._spool)
                except OSError as err:
                    print(f"WARNING: could not spool unsent metrics to {self._spool}: {err}", file=sys.stderr)
            return False

    def _probe(self) -> None:
        """Fail fast when an http(s) tracking server does not accept connections."""
        url = urllib.parse.urlparse(self.tracking_uri)
        if url.scheme in ("http", "https") and url.hostname:
            port = url.port or (443 if url.scheme == "https" else 80)
            socket.create_connection((url.hostname, port), timeout=self.probe_timeout_s).close()
