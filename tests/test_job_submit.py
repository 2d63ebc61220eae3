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

import re
import secrets
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.ray_head import (
    REPO,
    RayHead,
    TinySweep,
    base_env,
    dashboard_get,
    make_auth_token,
    needs_cli,
    private_head,
    ray_cli,
    run_logged,
    short_temp_dir,
    token_env,
    wait_for,
)

MAX_PACKAGE_BYTES = 8 * 2**20  # the repository without .venv is ~1-3 MB


def jobs_api(head: RayHead, token: str | None, path: str = "") -> requests.Response:
    """``GET /api/jobs/<path>`` on the head's dashboard."""
    return dashboard_get(head, token, f"api/jobs/{path}")


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
    tiny = TinySweep.make(tmp_path)
    token_path = make_auth_token(tmp_path / "home")
    token = token_path.read_text().strip()
    env = token_env(token_path)  # what README step 2 sets up: RAY_AUTH_MODE=token + the token file
    timings: dict[str, float] = {}
    with private_head(short_temp_dir("ray-job-"), timings, env=env, num_cpus=2, dashboard=True) as head:
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
        sweep = ["unlearn", "sweep", "--space", "tune_spaces/ga.yaml", "--num-samples", "2"]
        args = ["--address", address, "--submission-id", sub_id, "--working-dir", ".", "--", *sweep]
        t1 = time.monotonic()
        rc, out = run_logged(
            [str(ray_cli()), "job", "submit", *args, *tiny.options("job-sweep")],
            head,
            tmp_path / "submit.log",
            900,
            "ray job submit",
            cwd=REPO,
            env=env,
        )
        timings["job"] = time.monotonic() - t1
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
        parent, children = tiny.sweep_runs()
        assert parent.info.status == "FINISHED" and parent.data.tags["method"] == "ga"
        assert parent.data.params["space"].endswith("tune_spaces/ga.yaml")  # resolved in the uploaded dir
        assert parent.data.params["num_samples"] == "2" and "before.retain.vqa_acc" in parent.data.metrics
        status = {r.data.tags["trial_name"]: r.info.status for r in children}
        assert sorted(status) == ["trial_000", "trial_001"]
        # ASHA may stop the second trial at its first evaluation; the first one always runs to the end.
        assert status["trial_000"] == "FINISHED" and status["trial_001"] in ("FINISHED", "KILLED"), status
        assert all(r.data.params["method.name"] == "ga" for r in children)
        assert tiny.champion_run_id("job-sweep") in {r.info.run_id for r in children}
