"""An interrupted sweep driver, resumed: `unlearn sweep` is SIGKILLed mid-sweep, `--resume` finishes it.

On a fake autoscaling cluster (Ray's fake multi-node provider: a 0-CPU head, worker nodes added as
real raylets on this machine), which this module's process joins too: the driver runs as the CLI
against it, the resume runs here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipelines.sweep import run_sweep
from tests.pipeline_fixtures import write_sweep_inputs
from tests.test_sweep import SPACE
from unlearn_core.config import RunConfig


@pytest.fixture(scope="module")
def ray_local():
    """This module's Ray: a fake autoscaling cluster of up to two 2-CPU nodes, joined by this process."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    from tests.ray_head import fake_cluster

    if ray.is_initialized():
        ray.shutdown()
    with fake_cluster({"cpu_node": {"CPU": 2}}, max_workers=2, name="resume-test") as head:
        # The cluster's own token, for this process and the CLI it starts (which inherits os.environ).
        auth = {k: head.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        saved = {k: os.environ.get(k) for k in auth}
        os.environ.update(auth)
        reset_auth_token_state()  # Ray caches the auth mode and token per process (from earlier tests)
        ray.init(address=head.gcs_address, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            reset_auth_token_state()  # a later local Ray of this process starts without the token


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory, ray_local) -> dict[str, Path]:
    return write_sweep_inputs(tmp_path_factory.mktemp("sweep_resume"))


def _children(client: MlflowClient, exp_id: str, parent: str) -> list[Any]:
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def _tune_status(sweep_dir: Path) -> dict[str, str]:
    """Trial index -> status in the newest Tune experiment state (what ``Tuner.restore`` will read)."""
    states = sorted(sweep_dir.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # caught while Tune rewrites it
        return {}
    out = {}
    for entry in data.get("trial_data", []):
        trial = json.loads(entry[0])
        out[str(trial["experiment_tag"]).split("_", 1)[0]] = trial["status"]
    return out


@pytest.mark.slow
def test_interrupted_sweep_driver_resumes_without_rerunning_finished_trials(
    sweep_inputs, tmp_path, mlflow_store
):
    """`unlearn sweep` is SIGKILLed (its whole process group) once trial_000 finished; `--resume`
    finishes the sweep: trial_000 keeps its single result and MLflow run, trial_001 runs to the end."""
    uri = mlflow_store["tracking_uri"]
    space = tmp_path / "ga_interrupted.yaml"
    # A grid in listed order: trial_000 takes 4 steps, trial_001 24, so trial_001 is still running
    # when trial_000's end reaches Tune's experiment state (in-process trials are fast).
    space.write_text(SPACE.replace("train.steps: {choice: [2, 4]}", "train.steps: {grid: [4, 24]}"))
    sets = {
        "workdir": sweep_inputs["workdir"],
        "shards": sweep_inputs["shards"],
        "train.batch_size": 8,
        "train.cpus_per_worker": 0.5,
        "tracking.tracking_uri": uri,
        "tracking.registered_model_name": "tiny-interrupted",
    }
    cmd = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "sweep",
        "--space",
        str(space),
        "--num-samples",
        "1",
        "--scheduler",
        "none",
        "--max-concurrent",
        "1",
        "--max-leak",
        "1",
        "--min-retain-ratio",
        "0",
    ]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    import ray

    env = {
        **os.environ,
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONUNBUFFERED": "1",
        "TUNE_GLOBAL_CHECKPOINT_S": "0",  # Tune writes its experiment state on every loop, not adaptively
    }
    log_path = tmp_path / "driver.log"
    with open(log_path, "wb") as log_file:
        driver = subprocess.Popen(
            cmd,
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sweep_dir = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            found = sorted((Path(sets["workdir"]) / "ray_results").glob("sweep-ga_interrupted-*"))
            sweep_dir = found[0] if found else None
            if sweep_dir is not None and _tune_status(sweep_dir).get("0") == "TERMINATED":
                break
            time.sleep(0.5)
        else:
            pytest.fail(
                f"trial_000 did not finish before the kill (rc={driver.poll()}):\n{log_path.read_text()[-3000:]}"
            )
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and anything it started: no clean shutdown
        driver.wait(30)
    assert driver.returncode == -signal.SIGKILL
    assert sweep_dir is not None
    first_results = (sweep_dir / "trial_000" / "result.json").read_text().splitlines()
    assert json.loads(first_results[-1])["final"] == 1
    assert _tune_status(sweep_dir).get("1") != "TERMINATED"  # trial_001 had not finished

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(RunConfig().tracking.experiment).experiment_id
    (parent_id,) = {
        r.data.tags["mlflow.parentRunId"]
        for r in client.search_runs([exp_id], filter_string="tags.trial_name = 'trial_000'")
    }
    (first_run,) = [
        r for r in _children(client, exp_id, parent_id) if r.data.tags["trial_name"] == "trial_000"
    ]
    first_curve = [
        (m.step, m.value) for m in client.get_metric_history(first_run.info.run_id, "eval/objective")
    ]

    out = run_sweep("", RunConfig(), resume_dir=sweep_dir, log=lambda *a: None)
    trials = out.trials
    assert {n: t.status for n, t in trials.items()} == {"trial_000": "completed", "trial_001": "completed"}
    # trial_000 was not run again: the same result lines, the same MLflow run and curve.
    assert (sweep_dir / "trial_000" / "result.json").read_text().splitlines() == first_results
    assert trials["trial_000"].run_id == first_run.info.run_id
    assert [
        (m.step, m.value) for m in client.get_metric_history(first_run.info.run_id, "eval/objective")
    ] == first_curve
    children = _children(client, exp_id, parent_id)
    assert sorted(r.data.tags["trial_name"] for r in children) == ["trial_000", "trial_001"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert out.parent_run_id == parent_id and client.get_run(parent_id).info.status == "FINISHED"
    second = client.get_run(trials["trial_001"].run_id)
    for key in second.data.metrics:  # a partly run trial_001 resumed without logging a step twice
        steps = [m.step for m in client.get_metric_history(second.info.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    assert out.champion.trial in trials
