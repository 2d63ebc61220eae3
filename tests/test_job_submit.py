"""A sweep through ``ray job submit`` against a local head with token authentication, as the README shows.

A private head (own temp dir, loopback dashboard on a free port, ``RAY_AUTH_MODE=token`` with a token
made by ``ray get-auth-token --generate``, the venv's ``bin`` on its PATH so the job finds
``unlearn``) takes the job ``ray job submit --working-dir . -- unlearn sweep --space
tune_spaces/ga.yaml ...`` from the repository root. Checked: submissions without the token or with a
wrong one are refused (and create no job), the working-dir package stays small (``.venv`` and ``.git``
stay out: Ray's default excludes and our ``.gitignore``), the job SUCCEEDS, and the MLflow SQLite store
holds the parent run and one child run per trial.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.pipeline_fixtures import write_tiny_records, write_tiny_vanilla
from tests.ray_head import (
    REPO,
    RayHead,
    base_env,
    cluster_processes,
    make_auth_token,
    ray_cli,
    short_temp_dir,
    start_head,
    token_env,
    unlearn_cli,
    wait_for,
    wait_process,
)

MAX_PACKAGE_BYTES = 8 * 2**20  # the repository without .venv is ~1-3 MB

needs_cli = pytest.mark.skipif(
    ray_cli() is None or unlearn_cli() is None,
    reason="needs the `ray` and `unlearn` executables (make setup)",
)


def jobs_api(head: RayHead, token: str | None, path: str = "") -> requests.Response:
    """``GET /api/jobs/<path>`` on the head's dashboard, with the token as a Bearer header if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{head.dashboard_url}/api/jobs/{path}", headers=headers, timeout=30)


def submit(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``ray job submit ARGS`` from the repository root (so ``--working-dir .`` is the repository)."""
    return subprocess.run(
        [str(ray_cli()), "job", "submit", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
@pytest.mark.timeout(1500)  # above the sum of the waits below, so a timeout still tears the head down
@needs_cli
def test_sweep_runs_through_ray_job_submit_with_token_auth(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    records = write_tiny_records(tmp_path / "records")
    vanilla = write_tiny_vanilla(records, tmp_path / "vanilla", image_size=32)
    workdir = tmp_path / "wd"
    token_path = make_auth_token(tmp_path / "home")
    token = token_path.read_text().strip()
    env = token_env(token_path)  # what README step 2 sets up: RAY_AUTH_MODE=token + the token file

    temp_dir = short_temp_dir("ray-job-")
    head = start_head(temp_dir, env=env, num_cpus=2, dashboard=True)
    timings: dict[str, float] = {"head": time.monotonic() - t0}
    try:
        wait_for(lambda: jobs_api(head, token).status_code == 200, 180, "the dashboard's job API", interval=2)
        address = head.dashboard_url

        # Auth is on: the HTTP API and `ray job submit` refuse a request without the token or with a wrong one.
        assert jobs_api(head, None).status_code == 401
        assert jobs_api(head, secrets.token_hex(32)).status_code == 403
        empty_home = tmp_path / "empty-home"  # no ~/.ray/auth_token to fall back on
        empty_home.mkdir()
        refused = {  # the dashboard's answer, relayed by the CLI
            "Unauthorized: Missing authentication token": submit(
                ["--address", address, "--", "echo", "hi"], base_env(HOME=str(empty_home))
            ),
            "Forbidden: Invalid authentication token": submit(
                ["--address", address, "--", "echo", "hi"],
                base_env(HOME=str(empty_home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)),
            ),
        }
        for answer, r in refused.items():
            out = r.stdout + r.stderr
            assert r.returncode != 0 and answer in out, out[-3000:]
        assert jobs_api(head, token).json() == []  # nothing was submitted

        # The sweep, exactly as the README submits it (with a tiny model and benchmark for the test).
        sub_id = f"sweep-{uuid.uuid4().hex[:8]}"
        args = [
            "--address",
            address,
            "--submission-id",
            sub_id,
            "--working-dir",
            ".",
            "--",
            "unlearn",
            "sweep",
            "--space",
            "tune_spaces/ga.yaml",
            "--num-samples",
            "2",
            "--workdir",
            str(workdir),
            "--set",
            f"records={records}",
            "--set",
            f"model.spec={vanilla}",
            "--set",
            "synth.image_size=32",
            "--set",
            "train.batch_size=8",
            "--set",
            "tracking.registered_model_name=job-sweep",
        ]
        log_path = tmp_path / "submit.log"
        t1 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(ray_cli()), "job", "submit", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            rc = wait_process(proc, head, 900, "ray job submit")
        finally:
            print(log_path.read_text(errors="replace")[-3000:])
        timings["job"] = time.monotonic() - t1
        out = log_path.read_text(errors="replace")
        info: dict[str, Any] = jobs_api(head, token, sub_id).json()
        assert info["status"] == "SUCCEEDED", (info.get("message"), out[-6000:])
        assert rc == 0 and f"Job '{sub_id}' succeeded" in out

        # The working dir went up small: .venv (GBs) and .git stay out (Ray's default excludes and our
        # .gitignore); the code and the search spaces went, unpacked on the head under the package's name.
        uploaded = re.search(r"Uploading package gcs://(_ray_pkg_[0-9a-f]+)\.zip", out)
        assert uploaded, out[:3000]
        pkg = head.session_dir / "runtime_resources" / "working_dir_files" / uploaded.group(1)
        assert (pkg / "tune_spaces" / "ga.yaml").is_file() and (
            pkg / "pipelines" / "sweep" / "driver.py"
        ).is_file()
        assert not (pkg / ".venv").exists() and not (pkg / ".git").exists()
        assert tree_bytes(pkg) < MAX_PACKAGE_BYTES, tree_bytes(pkg)

        # MLflow: the parent run of the sweep and one child run per trial, in the store under --workdir.
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        exp = client.get_experiment_by_name("lvlm-unlearn")
        (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.job = 'sweep'")
        assert parent.info.status == "FINISHED" and parent.data.tags["method"] == "ga"
        assert parent.data.params["space"].endswith("tune_spaces/ga.yaml")  # resolved in the uploaded dir
        assert parent.data.params["num_samples"] == "2" and "before.retain.vqa_acc" in parent.data.metrics
        children = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        status = {r.data.tags["trial_name"]: r.info.status for r in children}
        assert sorted(status) == ["trial_000", "trial_001"]
        # ASHA may stop the second trial at its first evaluation; the first one always runs to the end.
        assert status["trial_000"] == "FINISHED" and status["trial_001"] in ("FINISHED", "KILLED"), status
        assert all(r.data.params["method.name"] == "ga" for r in children)
        champion = client.get_model_version_by_alias("job-sweep", "champion")
        assert champion.run_id in {r.info.run_id for r in children}
    finally:
        head.stop()
        left = [(p.pid, p.name()) for p in cluster_processes(temp_dir)]
        shutil.rmtree(temp_dir, ignore_errors=True)
        timings["total"] = time.monotonic() - t0
        print("timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert not left, f"processes of the test cluster survived teardown: {left}"
