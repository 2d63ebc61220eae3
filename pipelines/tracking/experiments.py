"""MLflow runs: the tracking URI, the experiment, and a run's life from RUNNING to a truthful end."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from unlearn_core.config import TrackingConfig

ERROR_TAG = "error"


def resolve_tracking_uri(cfg: TrackingConfig, workdir: str | Path) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else the embedded SQLite store in the workdir."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(workdir).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


# Concurrent writers a SQLite store served within a 1 s p99 write latency in bench/mlflow_load.py (8:
# 0.97 s; 32: 3 s; 64: 7 s; a tracking server on SQLite refused writes at 64). A sweep with more trials
# at once than this is warned before it starts.
SQLITE_MAX_WRITERS = 8


def concurrency_note(tracking_uri: str, writers: int) -> str | None:
    """A warning when ``writers`` processes (a sweep's concurrent trials) would write to a SQLite store."""
    if not tracking_uri.startswith("sqlite:") or writers <= SQLITE_MAX_WRITERS:
        return None
    return (
        f"WARNING: {writers} trials at once will write to the SQLite store {tracking_uri}: SQLite answers "
        f"{SQLITE_MAX_WRITERS} concurrent writers within 1 s, 32 within 3 s (bench/mlflow_load.py), and a "
        "tracking server on SQLite refused writes at 64. Run an MLflow tracking server on PostgreSQL "
        "(docs/cluster.md) and pass --set tracking.tracking_uri=http://HOST:5000, or limit the sweep with "
        f"--max-concurrent {SQLITE_MAX_WRITERS}."
    )


def artifact_root(tracking_uri: str, workdir: str | Path) -> str | None:
    """For the embedded SQLite store: a local artifact folder beside it; servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
        folder.mkdir(parents=True, exist_ok=True)
        return folder.resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, name: str, workdir: str | Path) -> str:
    """Create the experiment once (driver side) and return its id. A SQLite store whose artifact paths
    point into another folder (a copied workdir) is refused first (``store_paths.check_store``)."""
    if tracking_uri.startswith("sqlite:///"):
        from pipelines.store_paths import check_store

        check_store(Path(tracking_uri[len("sqlite:///") :]))
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(tracking_uri, workdir))
    except mlflow.exceptions.MlflowException:
        exp = client.get_experiment_by_name(name)  # another driver created it first
        if exp is None:
            raise
        return exp.experiment_id


def now_ms() -> int:
    return int(time.time() * 1000)


def open_run(
    tracking_uri: str,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> str:
    """A new RUNNING run with its tags and params (in batches of 100, MLflow's limit); returns its id."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    items = list((params or {}).items())
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in items[i : i + 100]])
    return run.info.run_id


def log_metrics(
    tracking_uri: str,
    run_id: str,
    metrics: Mapping[str, Any],
    step: int = 0,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Numeric values of ``metrics`` on the run at ``step`` (others, e.g. strings, are not metrics),
    and ``tags`` in the same request (MLflow's ``log_batch``: 1,000 metrics / 100 tags per call)."""
    batch = [
        Metric(k, float(v), now_ms(), step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    client = MlflowClient(tracking_uri)
    for k in range(max(-(-len(batch) // 500), -(-len(tag_list) // 100))):
        client.log_batch(
            run_id, metrics=batch[k * 500 : (k + 1) * 500], tags=tag_list[k * 100 : (k + 1) * 100]
        )


@contextmanager
def run_status(
    tracking_uri: str, run_id: str, *, settle_failure: bool = True, finish: bool = True
) -> Iterator[None]:
    """End the run truthfully: FINISHED when the block completes, KILLED on Ctrl-C, FAILED on an error,
    with the error tagged (``error``: type and message, also for errors raised inside a Ray Train worker).

    ``settle_failure=False`` only tags the error and leaves the final status to whoever knows better
    (a sweep trial: Tune says whether it failed or was stopped early by the scheduler).
    ``finish=False``: a block that only prepares the run (it stays RUNNING when the block completes).
    """
    client = MlflowClient(tracking_uri)
    try:
        yield
    except BaseException as exc:
        try:
            client.set_tag(run_id, ERROR_TAG, f"{type(exc).__name__}: {exc}"[:4000])
            if settle_failure:
                status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
                client.set_terminated(run_id, status)
        except Exception as err:  # noqa: BLE001 - the training error matters more than the tracking one
            print(f"WARNING: could not record the end of MLflow run {run_id}: {err}", file=sys.stderr)
        raise
    if finish:
        client.set_terminated(run_id, "FINISHED")
