"""Autoscaling for real on one machine: a sweep on Ray's fake multi-node cluster scales it up and back down.

A private head (``RAY_FAKE_CLUSTER=1``, 0 CPUs, token auth, own temp dir and ports) runs the v1
autoscaler with the ``fake_multinode`` provider: worker nodes are real raylets on this machine with
1 CPU and the ``tune_driver`` resource of cluster.yaml's CPU nodes, 0 to 2 of them. ``unlearn sweep``
(2 tiny GA trials, 1 worker each, trial drivers pinned to ``tune_driver`` like on cluster.yaml) runs
against it with ``RAY_ADDRESS``: nothing fits on the head, so the autoscaler must add nodes, the trials
must run there and finish (MLflow parent + child runs FINISHED), and the nodes must go away when idle.
The resource helpers the sweep uses on such a cluster are checked on their own, cheaply.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.sweep.resources import (
    capacity_note,
    cluster_capacity,
    default_max_concurrent,
    driver_resources,
)
from tests.pipeline_fixtures import TINY_GA_SPACE
from tests.ray_head import (
    RayHead,
    TinySweep,
    cluster_processes,
    dashboard_get,
    free_ports,
    make_auth_token,
    needs_cli,
    private_head,
    ray_cli,
    run_logged,
    short_temp_dir,
    token_env,
    unlearn_cli,
    wait_for,
)
from unlearn_core.config import RunConfig, with_overrides

MAX_WORKERS = 2
IDLE_MINUTES = 0.5  # the schema takes a number: 30 s keeps the test short without churning mid-sweep
WORKER_TYPE = "cpu_worker"


def fake_cluster_config(gcs_port: int) -> dict[str, Any]:
    """A complete autoscaler config for the fake multi-node provider (the wheel ships no example.yaml)."""
    return {
        "cluster_name": "fake-autoscale-test",
        "max_workers": MAX_WORKERS,
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": IDLE_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",  # else the fake nodes join port 6379
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": {"CPU": 1, "tune_driver": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_WORKERS,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def state_api(head: RayHead, token: str, kind: str) -> list[dict[str, Any]]:
    """Ray's State API over the dashboard (``/api/v0/nodes``, ``/api/v0/actors``), dead entries included."""
    r = dashboard_get(head, token, f"api/v0/{kind}", limit=10000, detail="true")
    r.raise_for_status()
    return list(r.json()["data"]["result"]["result"])


def alive_workers(head: RayHead, token: str) -> list[dict[str, Any]]:
    return [n for n in state_api(head, token, "nodes") if n["state"] == "ALIVE" and not n["is_head_node"]]


def autoscaler_status(head: RayHead) -> str:
    out = subprocess.run(
        [str(ray_cli()), "status", f"--address={head.gcs_address}"],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout if out.returncode == 0 and "Autoscaler status" in out.stdout else ""


def raylets(head: RayHead) -> int:
    return sum(1 for p in cluster_processes(head.temp_dir) if p.name() == "raylet")


@pytest.mark.slow
@pytest.mark.timeout(1500)  # above the sum of the waits below, so a timeout still tears the cluster down
@needs_cli
def test_sweep_scales_fake_cluster_up_runs_trials_on_new_nodes_and_scales_down(tmp_path: Path) -> None:
    tiny = TinySweep.make(tmp_path)
    space = tmp_path / "ga_tiny.yaml"
    space.write_text(TINY_GA_SPACE)
    token_path = make_auth_token(tmp_path / "home")
    token = token_path.read_text().strip()

    temp_dir = short_temp_dir("ray-as-")
    gcs_port = free_ports(1)[0]
    config = temp_dir / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(gcs_port)))
    env = token_env(token_path, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    timings: dict[str, float] = {}
    with private_head(
        temp_dir, timings, env=env, num_cpus=0, dashboard=True, autoscaling_config=config, port=gcs_port
    ) as head:
        # The autoscaler is up (it publishes a status) and the cluster is the head alone, with 0 CPUs.
        wait_for(lambda: autoscaler_status(head), 180, "the autoscaler's first status report", interval=3)
        nodes = wait_for(lambda: state_api(head, token, "nodes"), 120, "the State API", interval=3)
        assert [n["is_head_node"] for n in nodes if n["state"] == "ALIVE"] == [True]
        assert nodes[0]["resources_total"].get("CPU", 0) == 0

        sweep = [str(unlearn_cli()), "sweep", "--space", str(space), "--num-samples", "2"]
        sweep += [
            "--scheduler",
            "none",
            "--workers-per-trial",
            "1",
            "--max-leak",
            "1",
            "--min-retain-ratio",
            "0",
        ]
        settings = (  # one-worker trials would train in their own actor; here each trial runs Ray Train
            "train.cpus_per_worker=1",
            "train.launcher=ray_train",
        )
        sweep_env = {**env, "RAY_ADDRESS": head.gcs_address, "UNLEARN_TUNE_DRIVER_RESOURCE": "tune_driver"}
        t1 = time.monotonic()
        rc, out = run_logged(
            [*sweep, *tiny.options("autoscale-sweep", *settings)],
            head,
            tmp_path / "sweep.log",
            720,
            "the sweep",
            env=sweep_env,
            cwd=tmp_path,
        )
        timings["sweep"] = time.monotonic() - t1
        assert rc == 0, out[-6000:]
        # Whatever the cluster held when the Tuner started (0 CPUs, or nodes the data step brought), the
        # sweep runs one trial at a time: 2 one-CPU nodes at most cannot hold a trial next to an evaluation.
        assert "up to 1 concurrent trial(s)" in out

        # (a) The autoscaler added worker nodes of our type (its own log and the node table say so).
        monitor = (head.session_dir / "logs" / "monitor.log").read_text(errors="replace")
        assert re.search(rf"Adding \d node\(s\) of type {WORKER_TYPE}", monitor), monitor[-3000:]
        nodes = state_api(head, token, "nodes")
        workers = {n["node_id"] for n in nodes if not n["is_head_node"]}
        assert 1 <= len(workers), nodes
        assert all(n["resources_total"].get("tune_driver") == 1 for n in nodes if not n["is_head_node"])
        assert len([n for n in nodes if n["state"] == "ALIVE" and not n["is_head_node"]]) <= MAX_WORKERS

        # (b) Both trials finished (a failed trial has no Train run to place, and its error is the real
        # finding: it once was Ray Data's footer reader placed on a node the autoscaler was removing):
        # parent and both child runs FINISHED in the SQLite store, champion registered.
        failed = re.findall(r"^trial_\d+: failed.*$", out, flags=re.M)
        assert not failed, failed
        parent, children = tiny.sweep_runs()
        assert parent.info.status == "FINISHED"
        assert sorted(r.data.tags["trial_name"] for r in children) == ["trial_000", "trial_001"]
        assert {r.info.status for r in children} == {"FINISHED"}
        assert all("forget.leak_rate" in r.data.metrics for r in children)
        assert tiny.champion_run_id("autoscale-sweep") in {r.info.run_id for r in children}

        # (c) The trials ran there: every trial driver (Tune's ImplicitFunc) and Train worker on a worker node.
        actors = state_api(head, token, "actors")
        placed = {
            cls: [a["node_id"] for a in actors if a["class_name"] == cls]
            for cls in ("ImplicitFunc", "RayTrainWorker")
        }
        assert placed["ImplicitFunc"] and len(placed["RayTrainWorker"]) >= 2, placed  # a Train run per trial
        assert set(placed["ImplicitFunc"]) | set(placed["RayTrainWorker"]) <= workers, (placed, workers)

        # (d) Idle nodes go away: no alive worker node, their raylets gone, the autoscaler logged it.
        t2 = time.monotonic()
        wait_for(
            lambda: not alive_workers(head, token), 240, "the idle worker nodes to be removed", interval=5
        )
        timings["scale_down"] = time.monotonic() - t2
        monitor = (head.session_dir / "logs" / "monitor.log").read_text(errors="replace")
        assert f"nodes of type {WORKER_TYPE} (idle)" in monitor
        wait_for(lambda: raylets(head) == 1, 60, "the removed nodes' raylets to exit")
        assert head.proc.poll() is None


# --------------------------------------------------------------------------- resource helpers, cheap


def test_sweep_resources_on_a_cluster_that_starts_at_its_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNLEARN_TUNE_DRIVER_CPUS", raising=False)
    monkeypatch.setenv("UNLEARN_TUNE_DRIVER_RESOURCE", "tune_driver")
    cfg = with_overrides(RunConfig(), {"train.cpus_per_worker": 1})
    head_only = {"CPU": 0.0, "memory": 8e9, "object_store_memory": 2e9}

    # Nothing known beyond the 0-CPU head: the driver holds no CPU, 1 trial at a time, and the log says why.
    drv = driver_resources(cfg, 1, cluster_capacity(head_only, None))
    assert drv["CPU"] == 0 and drv["tune_driver"] == 1 and drv["memory"] > 0
    assert default_max_concurrent(cfg, 1, drv, head_only) == 1
    note = capacity_note(cfg, 1, drv, head_only, autoscaler_known=False)
    assert note and "CPU 0" in note and "tune_driver 0" in note and "--max-concurrent" in note

    # The autoscaler's maximum (where Ray publishes it) sizes the sweep for the cluster it will become.
    most = {"CPU": 64.0, "tune_driver": 8.0, "GPU": float(2**63 - 1)}  # an unbounded group: ignored
    cap = cluster_capacity(head_only, most)
    assert cap["CPU"] == 64 and cap["tune_driver"] == 8 and "GPU" not in cap and cap["memory"] == 8e9
    drv = driver_resources(cfg, 1, cap)
    assert drv == {"CPU": 1.0, "tune_driver": 1.0}
    assert default_max_concurrent(cfg, 1, drv, cap) == 8  # tune_driver slots bound it before CPUs do
    assert capacity_note(cfg, 1, drv, cap, autoscaler_known=True) is None

    # A small local machine is not an autoscaling cluster: no note there.
    monkeypatch.delenv("UNLEARN_TUNE_DRIVER_RESOURCE")
    local = {"CPU": 2.0}
    assert capacity_note(cfg, 1, driver_resources(cfg, 1, local), local, autoscaler_known=False) is None
