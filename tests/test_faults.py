"""Fault injection on real Ray and real MLflow: a training worker killed mid-run, a tracking server down.

Nothing is mocked: the worker is SIGKILLed through its pid from Ray's actor table, and the tracking
server is a real ``mlflow server`` subprocess that is stopped and started again on the same port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.shards import stream_dataset
from pipelines.shards.build import shard_records
from pipelines.train import WorkerSpec, fit
from tests.pipeline_fixtures import save_tiny_model, write_tiny_records
from tests.ray_head import free_ports
from unlearn_core.config import RunConfig, with_overrides


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _history_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(int(m.step) for m in client.get_metric_history(run_id, key))


# --------------------------------------------------------------------------- worker killed mid-run


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("faults")
    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    return root / "shards"


@pytest.fixture(scope="module")
def start_model(shards) -> Path:
    """The model an unlearning run starts from: a tiny LLaVA saved with the shards' processor."""
    return save_tiny_model(shards, shards.parent / "start_model")


def _alive_train_workers(job_id: str) -> dict[str, int]:
    """Actor id -> pid of this driver's live ``RayTrainWorker`` actors (GCS actor table)."""
    from ray._private import state

    table = state.actors(actor_state_name="ALIVE")
    return {
        aid: int(a["Pid"])
        for aid, a in table.items()
        if a["ActorClassName"] == "RayTrainWorker" and a["JobID"] == job_id and a.get("Pid")
    }


class _Killer(threading.Thread):
    """SIGKILL the training worker once MLflow shows step ``at`` logged (and not ``before``) yet."""

    def __init__(self, tracking_uri: str, run_id: str, job_id: str, at: int, before: int) -> None:
        super().__init__(daemon=True)
        self.client = MlflowClient(tracking_uri)
        self.run_id, self.job_id, self.at, self.before = run_id, job_id, at, before
        self.stop = threading.Event()
        self.killed: int | None = None
        self.killed_when: list[int] = []
        self.replacement: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(0.25):
                if self.killed is None:
                    try:
                        steps = _history_steps(self.client, self.run_id, "train/loss")
                    except Exception:  # noqa: BLE001 - the store may be busy with a write; poll again
                        continue
                    if steps and self.at <= max(steps) < self.before:
                        workers = _alive_train_workers(self.job_id)
                        if len(workers) == 1:
                            (pid,) = workers.values()
                            os.kill(pid, signal.SIGKILL)
                            self.killed, self.killed_when = pid, steps
                elif self.replacement is None:
                    fresh = [p for p in _alive_train_workers(self.job_id).values() if p != self.killed]
                    if fresh:
                        self.replacement = fresh[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_killed_worker_resumes_unlearning_from_checkpoint_and_logs_each_step_once(
    shards, start_model, tmp_path, mlflow_store, ray_local, capsys
):
    """An unlearning run (GradDiff: forget and retain streams) loses its worker to SIGKILL mid-run."""
    # Reports at 10 (log), 15 (checkpoint), 20 (log), 30 (checkpoint + end). The kill lands after
    # step 20 was logged, so the restart resumes from 15 and runs (and reports) step 20 again.
    steps, ckpt_every, kill_at = 30, 15, 20
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(tmp_path / "wd"),
            "shards": str(shards),
            "method.name": "grad_diff",
            "train.steps": steps,
            "train.batch_size": 8,
            "train.num_workers": 1,
            "train.cpus_per_worker": 0.5,
            "train.checkpoint_every": ckpt_every,
            "train.max_failures": 2,
            "train.torch_threads": 1,
            "train.launcher": "ray_train",  # a Train worker actor to kill
        },
    )
    uri = mlflow_store["tracking_uri"]
    exp_id = tracking.ensure_experiment(uri, "faults", tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(exp_id, run_name="killed-worker").info.run_id
    live = tracking.MlflowReportCallback(uri, run_id)
    # A second callback whose server never answers: training must finish regardless, and the
    # driver-side flush at the end says how many values it could not log.
    down = tracking.MlflowReportCallback(f"http://127.0.0.1:{free_ports(1)[0]}", "0" * 32)

    job = WorkerSpec(
        cfg=cfg.model_dump(),
        mode="unlearn",
        processor_dir=str(start_model),
        init_model=str(start_model),
        image_size=32,
    )
    killer = _Killer(uri, run_id, ray_local.get_runtime_context().get_job_id(), at=kill_at, before=steps)
    killer.start()
    t0 = time.perf_counter()
    try:
        datasets = {"forget": stream_dataset(shards, "forget"), "retain": stream_dataset(shards, "retain")}
        result = fit(job, datasets, name="killed", storage_path=str(tmp_path / "ray"), callbacks=[live, down])
    finally:
        killer.stop.set()
        killer.join(10)
    elapsed = time.perf_counter() - t0
    assert killer.error is None, killer.error
    assert killer.killed is not None, "the worker finished before it could be killed"
    assert killer.killed_when and max(killer.killed_when) == kill_at
    assert killer.replacement is not None, "no replacement worker was started after the kill"
    assert result.error is None

    # Recovered and finished: the last checkpoint is the final step and holds the final model.
    with result.checkpoint.as_directory() as d:
        assert json.loads((Path(d) / "trainer_state.json").read_text())["step"] == steps
        assert (Path(d) / "model").is_dir()

    # Each logging point once, although step 20 was reported twice (before the kill and after the
    # restart from step 15): MLflow cannot replace a point, so the re-run report is skipped.
    points = [10, 15, 20, 30]
    run = client.get_run(run_id)
    assert {"train/loss", "train/grad_norm", "train/steps_per_s"} <= set(run.data.metrics)
    for key in run.data.metrics:
        assert _history_steps(client, run_id, key) == points, key
    logged = sum(len(client.get_metric_history(run_id, k)) for k in run.data.metrics)

    # The unreachable tracker held back exactly what the live one logged; the driver-side flush
    # (after the controller actor is gone) does not raise and reports the count.
    capsys.readouterr()
    assert down.flush() is False
    err = capsys.readouterr().err
    assert f"{logged} metric values were NOT logged" in err, err
    print(f"killed-worker fit: {elapsed:.1f} s", file=sys.__stderr__)


# --------------------------------------------------------------------------- tracking server down


class _MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 that can be stopped and started on the same port + store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{root / 'server.db'}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 150.0) -> float:
        t0 = time.perf_counter()
        self.starts += 1
        log = (self.root / f"server-{self.starts}.log").open("wb")
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(exe),
            "server",
            "--backend-store-uri",
            self.store,
            "--default-artifact-root",
            (self.root / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.3)
        tail = (self.root / f"server-{self.starts}.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"mlflow server did not come up on {self.uri}:\n{tail}")

    def stop(self) -> None:
        """An outage as a crash: SIGKILL the server's process group (the CLI and its uvicorn child)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(20)
        deadline = time.monotonic() + 20
        while _listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.proc = None


@pytest.fixture()
def mlflow_server(tmp_path):
    server = _MlflowServer(tmp_path)
    yield server
    server.stop()


def test_tracking_server_outage_buffers_then_delivers_each_value_once(mlflow_server, capsys):
    # The run exists in the server's store before the server starts (as the driver would create it).
    store = MlflowClient(mlflow_server.store)
    run_id = store.create_run(store.create_experiment("outage")).info.run_id
    up1 = mlflow_server.start()

    cb = tracking.MlflowReportCallback(mlflow_server.uri, run_id)

    def report(step: int) -> float:
        t0 = time.perf_counter()
        # metrics[i] is worker i's report: only rank 0's is logged.
        cb.after_report(
            None,
            [
                {"step": float(step), "loss": 1.0 / step, "grad_norm": float(step)},
                {"step": float(step), "loss": 99.0},
            ],
            None,
        )
        return time.perf_counter() - t0

    report(1)
    assert "WARNING" not in capsys.readouterr().err
    mlflow_server.stop()

    # Down: reports return promptly (the Train controller is not held up), with a clear warning.
    waits = [report(2), report(3)]
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow unreachable") == 2, err
    assert mlflow_server.uri in err and "4 metric values buffered" in err, err
    assert max(waits) < 15, waits

    up2 = mlflow_server.start()
    report(4)
    assert "WARNING" not in capsys.readouterr().err
    client = MlflowClient(mlflow_server.uri)
    for key in ("train/loss", "train/grad_norm"):
        assert _history_steps(client, run_id, key) == [1, 2, 3, 4], key
    losses = {int(m.step): m.value for m in client.get_metric_history(run_id, "train/loss")}
    assert losses == {s: pytest.approx(1.0 / s) for s in (1, 2, 3, 4)}  # rank 0's values
    assert cb.flush() is True  # nothing left

    # Down at the end of training: no exception, and the final warning gives the count lost.
    mlflow_server.stop()
    report(5)
    capsys.readouterr()
    assert cb.flush() is False
    err = capsys.readouterr().err
    assert f"2 metric values were NOT logged to MLflow run {run_id}" in err, err
    assert _history_steps(MlflowClient(mlflow_server.store), run_id, "train/loss") == [1, 2, 3, 4]
    print(f"mlflow server start: {up1:.1f} s, restart: {up2:.1f} s", file=sys.__stderr__)
