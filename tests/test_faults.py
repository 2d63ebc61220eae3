"""Fault injection on real Ray and real MLflow: a training worker killed mid-run, a tracking server down.

Nothing is mocked: the worker is SIGKILLed through its pid from Ray's actor table, and the tracking
server is a real ``mlflow server`` subprocess that is stopped and started again on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.shards import stream_dataset
from pipelines.shards.build import shard_records
from pipelines.train import WorkerSpec, fit
from tests.pipeline_fixtures import save_tiny_model, write_tiny_records
from tests.ray_head import free_ports
from tests.tracking_servers import MlflowServer
from unlearn_core.config import RunConfig, with_overrides


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


@pytest.fixture()
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
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


@pytest.mark.slow
def test_background_sender_queues_reports_and_delivers_each_value_once_across_restarts(mlflow_server, capsys):
    """A job that trains in its own process (a sweep trial) logs through a sender thread: a report only
    queues its values, an outage is warned about once, and every value reaches the run once, also when
    the server comes back only after training ended (the final flush waits for it)."""
    store = MlflowClient(mlflow_server.store)
    run_id = store.create_run(store.create_experiment("background")).info.run_id
    mlflow_server.start()
    cb = tracking.MlflowReportCallback(mlflow_server.uri, run_id, background=True, outage_wait_s=240)

    def report(step: int) -> None:
        cb.after_report(None, [{"step": float(step), "loss": 1.0 / step, "grad_norm": float(step)}], None)

    report(1)
    client = MlflowClient(mlflow_server.uri)
    deadline = time.monotonic() + 60
    while not _history_steps(client, run_id, "train/loss") and time.monotonic() < deadline:
        time.sleep(0.2)  # the sender delivers step 1 (a request cut off mid-way is MLflow's to retry)
    mlflow_server.stop()
    for step in (2, 3):
        report(step)
    report(4)
    time.sleep(3 * cb.RETRY_S)  # the sender tries (and fails) in the meantime
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow unreachable") == 1, err  # one outage, one warning

    # Down when training ends: the final flush waits until the server is back, then delivers.
    restarter = threading.Timer(2.0, mlflow_server.start)
    restarter.start()
    try:
        assert cb.flush() is True
    finally:
        restarter.join()
    assert "MLflow reachable again" in capsys.readouterr().err
    for key in ("train/loss", "train/grad_norm"):
        assert _history_steps(client, run_id, key) == [1, 2, 3, 4], key

    # A batch the server stored but whose answer was lost is sent again: the values keep the time they
    # were reported, so the store holds them once.
    report(5)
    assert cb.flush() is True
    sent = [m for m in client.get_metric_history(run_id, "train/loss") if m.step == 5]
    cb._pending.extend(("train/loss", m.value, 5, m.timestamp) for m in sent)
    assert cb.flush() is True
    assert _history_steps(client, run_id, "train/loss") == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- faults mid-sweep, fake cluster

FAULT_SPACE = """
method: ga
num_samples: 4
base:
  train.eval_every: 5
  train.eval_max_samples: 4
  train.checkpoint_every: 5
space:
  train.lr: {loguniform: [1.0e-4, 3.0e-3]}
  train.steps: {choice: [STEPS]}
"""


@pytest.fixture(scope="module")
def fake(shards):
    """A fake autoscaling cluster: a 0-CPU head, up to two 2-CPU worker nodes (real raylets here)."""
    from tests.ray_head import fake_cluster

    with fake_cluster({"cpu_node": {"CPU": 2}}, max_workers=2, name="faults-test") as head:
        yield head


def _sweep_cli(
    head,
    space: Path,
    workdir: Path,
    shards: Path,
    model: Path,
    log_path: Path,
    *,
    extra: list[str],
    sets: dict,
):
    """``unlearn sweep`` against the fake cluster (its own process group), 2 trials at once."""
    import subprocess

    from tests.ray_head import unlearn_cli

    cmd = [
        str(unlearn_cli()), "sweep", "--space", str(space), "--workdir", str(workdir),
        "--scheduler", "none", "--max-concurrent", "2", "--max-leak", "1", "--min-retain-ratio", "0", *extra,
    ]  # fmt: skip
    sets = {
        "shards": shards,
        "model.spec": model,
        "train.batch_size": 8,
        "train.cpus_per_worker": 1,
        "train.torch_threads": 1,
        "train.launcher": "in_process",
        **sets,
    }
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**head.env, "RAY_ADDRESS": head.gcs_address}
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _sweep_runs(uri: str) -> tuple[Any, list[Any]]:
    """The (one) sweep parent run in the store and its child runs."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(RunConfig().tracking.experiment)
    if exp is None:
        return None, []
    parents = client.search_runs([exp.experiment_id], filter_string="tags.job = 'sweep'")
    if not parents:
        return None, []
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    return parents[0], children


def _logged_step(client: MlflowClient, run: Any) -> int:
    return max((int(m.step) for m in client.get_metric_history(run.info.run_id, "train/loss")), default=0)


def _no_step_twice(client: MlflowClient, runs: list[Any]) -> None:
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.data.tags["trial_name"], key, steps)


def _trial_failures(workdir: Path) -> dict[str, int]:
    """Trial index -> how often Tune saw it fail (the newest experiment state)."""
    (state,) = sorted((workdir / "ray_results").glob("sweep-*/experiment_state-*.json"))[-1:]
    out = {}
    for entry in json.loads(state.read_text())["trial_data"]:
        trial, meta = json.loads(entry[0]), json.loads(entry[1])
        out[str(trial["experiment_tag"]).split("_", 1)[0]] = int(meta["num_failures"])
    return out


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_node_lost_mid_sweep_its_trials_restart_and_the_sweep_picks_a_champion(
    fake, shards, start_model, tmp_path
):
    """The worker node running trials is killed (its raylet and every process under it, SIGKILL) once
    a trial has logged steps. With ``--max-failures 1`` Tune starts the lost trials again (on a node
    the autoscaler has or adds), each resumes from its last checkpoint in its own MLflow run, and the
    sweep ends with every trial FINISHED and a champion."""
    from tests.ray_head import node_processes, wait_process

    space = tmp_path / "ga_fault.yaml"
    space.write_text(FAULT_SPACE.replace("STEPS", "30"))
    workdir = tmp_path / "wd"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    proc = _sweep_cli(
        fake, space, workdir, shards, start_model, tmp_path / "sweep.log",
        extra=["--max-failures", "1"], sets={"tracking.registered_model_name": "node-lost"},
    )  # fmt: skip
    killed: list[int] = []

    def kill_a_busy_node() -> None:
        if killed:
            return
        try:
            _, children = _sweep_runs(uri) if (workdir / "mlflow.db").exists() else (None, [])
            client = MlflowClient(uri)
            busy = any(r.info.status == "RUNNING" and 5 <= _logged_step(client, r) < 30 for r in children)
        except Exception:  # noqa: BLE001 - the store is busy with a write: look again
            return
        if not busy:
            return
        for procs in node_processes(fake).values():
            trials = [p for p in procs if _cmd(p).startswith("ray::ImplicitFunc")]
            if trials:
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                killed.append(len(trials))
                return

    try:
        rc = wait_process(proc, fake, 1200, "the sweep", on_tick=kill_a_busy_node, interval=1.0)
    finally:
        out = (tmp_path / "sweep.log").read_text(errors="replace")
        print(out[-3000:])
    assert killed, "no node was running a trial that had logged steps"
    assert rc == 0, out[-5000:]
    parent, children = _sweep_runs(uri)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["trial_name"] for r in children) == [f"trial_{i:03d}" for i in range(4)]
    assert {r.info.status for r in children} == {"FINISHED"}, [
        (r.data.tags["trial_name"], r.info.status) for r in children
    ]
    failures = _trial_failures(workdir)
    assert sum(failures.values()) >= killed[0] >= 1, failures  # the lost trials were started again
    client = MlflowClient(uri)
    _no_step_twice(client, children)
    assert all(_logged_step(client, r) == 30 for r in children)
    assert client.get_model_version_by_alias("node-lost", "champion").run_id in {
        r.info.run_id for r in children
    }
    print(f"node lost: {killed[0]} trial(s) on it, Tune failures {failures}", file=sys.__stderr__)


def _cmd(p: Any) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_tracking_server_restarted_mid_sweep_delivers_every_value_once(fake, shards, start_model, tmp_path):
    """The sweep logs to a real ``mlflow server``, which is killed once a trial has logged steps and
    started again 5 s later. Trials keep training meanwhile (their reports queue), and every child run
    ends FINISHED with each report's values exactly once."""
    from tests.ray_head import wait_process

    server = MlflowServer(tmp_path / "server")
    server.start()
    space = tmp_path / "ga_outage.yaml"
    space.write_text(FAULT_SPACE.replace("STEPS", "20").replace("num_samples: 4", "num_samples: 3"))
    proc = _sweep_cli(
        fake, space, tmp_path / "wd", shards, start_model, tmp_path / "sweep.log", extra=[],
        sets={"tracking.tracking_uri": server.uri, "tracking.registered_model_name": "server-restart"},
    )  # fmt: skip
    outage: list[float] = []

    def restart_once() -> None:
        if outage:
            return
        try:
            _, children = _sweep_runs(server.uri)
            client = MlflowClient(server.uri)
            busy = any(5 <= _logged_step(client, r) < 20 for r in children if r.info.status == "RUNNING")
        except Exception:  # noqa: BLE001 - the server is busy: look again
            return
        if busy:
            t0 = time.monotonic()
            server.stop()
            time.sleep(5)
            server.start()
            outage.append(time.monotonic() - t0)

    try:
        rc = wait_process(proc, fake, 1200, "the sweep", on_tick=restart_once, interval=1.0)
        out = (tmp_path / "sweep.log").read_text(errors="replace")
        assert outage, "no trial had logged steps while the sweep ran"
        assert rc == 0, out[-5000:]
        parent, children = _sweep_runs(server.uri)
        assert parent.info.status == "FINISHED"
        assert sorted(r.data.tags["trial_name"] for r in children) == ["trial_000", "trial_001", "trial_002"]
        assert {r.info.status for r in children} == {"FINISHED"}
        client = MlflowClient(server.uri)
        _no_step_twice(client, children)
        for r in children:  # every report delivered: each evaluation step, and the final metrics
            steps = [int(m.step) for m in client.get_metric_history(r.info.run_id, "eval/objective")]
            assert sorted(steps) == [5, 10, 15, 20], (r.data.tags["trial_name"], steps)
            assert {"forget.leak_rate", "objective", "time/job_s"} <= set(r.data.metrics)
        print(f"mlflow server down for {outage[0]:.0f} s mid-sweep", file=sys.__stderr__)
    finally:
        server.stop()
