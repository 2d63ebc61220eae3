"""A private Ray head for integration tests: own temp dir, free loopback ports, clean teardown.

Never ``ray stop`` (it kills every Ray process of this user, other jobs' clusters included): the head
runs as ``ray start --head --block`` in its own process group, and teardown signals that group, then
kills whatever is left that belongs to this head: processes whose command line names its temp dir
(raylets, agents, GCS, the autoscaler's fake worker nodes) and their descendants (workers, whose
command line is rewritten to ``ray::...``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
HOST = "127.0.0.1"


def ray_cli() -> str | None:
    """The ``ray`` executable of this project's venv (else the one on PATH), or None."""
    local = VENV_BIN / "ray"
    return str(local) if local.is_file() else shutil.which("ray")


def unlearn_cli() -> str | None:
    """The ``unlearn`` console script of this project's venv (else the one on PATH), or None."""
    local = VENV_BIN / "unlearn"
    return str(local) if local.is_file() else shutil.which("unlearn")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def short_temp_dir(prefix: str) -> Path:
    """A short temp dir: Ray's Unix socket paths under it must stay below ~107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_err: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as err:  # a transient failure while the cluster changes
            last_err = err
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f} s waiting for {what}"
        + (f" (last error: {last_err})" if last_err else "")
    )


@dataclass
class RayHead:
    """A running ``ray start --head --block`` and what talking to it takes."""

    proc: subprocess.Popen[bytes]
    temp_dir: Path
    gcs_port: int
    dashboard_port: int | None
    env: dict[str, str]
    log_path: Path
    extra_cleanup: list[Path] = field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        assert self.dashboard_port is not None, "head started without the dashboard"
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def session_dir(self) -> Path:
        return (self.temp_dir / "session_latest").resolve()

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return text[-chars:]

    def stop(self) -> list[int]:
        """Stop the head and every process of this cluster; returns the pids that had to be killed."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        killed = kill_cluster_processes(self.temp_dir)
        _signal_group(self.proc.pid, signal.SIGKILL)  # anything left in the group (ours alone)
        return killed


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    """Processes of the cluster under ``temp_dir``: the ones naming it on their command line, and
    all their descendants (Ray workers rewrite their command line to ``ray::...``)."""
    marker = str(temp_dir)
    roots: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and any(marker in part for part in (p.info["cmdline"] or [])):
                roots[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found = dict(roots)
    for p in roots.values():
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def kill_cluster_processes(temp_dir: Path, grace: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` s, every process of the cluster under ``temp_dir``."""
    procs = cluster_processes(temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def start_head(
    temp_dir: Path,
    *,
    env: Mapping[str, str],
    num_cpus: int,
    dashboard: bool = False,
    autoscaling_config: Path | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 180.0,
) -> RayHead:
    """``ray start --head --block`` on loopback with free ports (GCS on ``port`` if given), in its own
    process group; waits until the head says it started (or fails with its output)."""
    ray = ray_cli()
    assert ray, "ray CLI not found"
    (gcs, client, node_mgr, obj_mgr, agent_listen, agent_grpc, metrics, rt_env, dash) = free_ports(9)
    gcs = port or gcs
    args = [
        ray,
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        f"--node-ip-address={HOST}",
        f"--port={gcs}",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
        f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rt_env}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        f"--include-dashboard={'true' if dashboard else 'false'}",
    ]
    if dashboard:
        args += [f"--dashboard-host={HOST}", f"--dashboard-port={dash}"]
    if autoscaling_config is not None:
        args.append(f"--autoscaling-config={autoscaling_config}")
    args += list(extra_args)
    log_path = temp_dir / "ray-start.log"
    full_env = dict(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(temp_dir),
        )
    head = RayHead(
        proc=proc,
        temp_dir=temp_dir,
        gcs_port=gcs,
        dashboard_port=dash if dashboard else None,
        env=full_env,
        log_path=log_path,
    )

    def started() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{head.log_tail()}")
        return "Ray runtime started" in head.log_tail(100_000)

    try:
        deadline = time.monotonic() + timeout
        while not started():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"ray start did not report a started head in {timeout:.0f} s:\n{head.log_tail()}"
                )
            time.sleep(1.0)
    except BaseException:
        head.stop()
        raise
    return head


def base_env(**extra: str) -> dict[str, str]:
    """The test's environment for Ray processes: the venv first on PATH, no inherited Ray address,
    auth, MLflow or sweep settings (the caller sets what it means), quiet Train V2 warnings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_", "RAY_enable", "PYTEST_", "UNLEARN_", "MLFLOW_"))
    }
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS"] = "0"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def make_auth_token(home: Path) -> Path:
    """A fresh Ray auth token made by ``ray get-auth-token --generate`` with ``HOME=home``: the CLI
    writes ``home/.ray/auth_token``, so the user's own ``~/.ray/auth_token`` is neither read nor
    overwritten. Point ``RAY_AUTH_TOKEN_PATH`` at the returned file."""
    home.mkdir(parents=True, exist_ok=True)
    env = base_env(HOME=str(home))
    out = subprocess.run(
        [str(ray_cli()), "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=120
    )
    path = home / ".ray" / "auth_token"
    assert out.returncode == 0 and path.is_file(), out.stderr[-2000:]
    assert out.stdout.strip() == path.read_text().strip()
    path.chmod(0o600)
    return path


def token_env(token_path: Path, **extra: str) -> dict[str, str]:
    """``base_env`` with token authentication on and this token (what the head, its nodes, jobs and
    every CLI call share)."""
    return base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), **extra)


def wait_process(
    proc: subprocess.Popen[Any],
    head: RayHead,
    timeout: float,
    what: str,
    on_tick: Callable[[], None] | None = None,
    interval: float = 3.0,
) -> int:
    """Wait for ``proc`` (a CLI run against ``head``, started with ``start_new_session=True``), calling
    ``on_tick`` between polls; fail early if the head dies, and after ``timeout`` s (killing ``proc``'s
    process group)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if head.proc.poll() is not None:
            _signal_group(proc.pid, signal.SIGKILL)
            raise RuntimeError(
                f"the Ray head exited ({head.proc.returncode}) during {what}:\n{head.log_tail()}"
            )
        if time.monotonic() > deadline:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise TimeoutError(f"{what} did not finish in {timeout:.0f} s")
        if on_tick is not None:
            on_tick()
        time.sleep(interval)
    return int(proc.returncode)


# -- a sweep against a private head (tests/test_job_submit.py, tests/test_autoscaling.py) ------------

needs_cli = pytest.mark.skipif(
    ray_cli() is None or unlearn_cli() is None,
    reason="needs the `ray` and `unlearn` executables (make setup)",
)


@dataclass(frozen=True)
class TinySweep:
    """A tiny benchmark and starting model for `unlearn sweep` on a private head, and its workdir."""

    records: Path
    vanilla: Path
    workdir: Path

    @classmethod
    def make(cls, tmp_path: Path) -> TinySweep:
        from tests.pipeline_fixtures import write_tiny_records, write_tiny_vanilla

        records = write_tiny_records(tmp_path / "records")
        return cls(records, write_tiny_vanilla(records, tmp_path / "vanilla", image_size=32), tmp_path / "wd")

    def options(self, registered_name: str, *settings: str) -> list[str]:
        """``--workdir`` and the ``--set`` options of a sweep on these inputs (plus ``settings``)."""
        sets = [
            f"records={self.records}",
            f"model.spec={self.vanilla}",
            "synth.image_size=32",
            "train.batch_size=8",
            *settings,
            f"tracking.registered_model_name={registered_name}",
        ]
        return ["--workdir", str(self.workdir), *(arg for s in sets for arg in ("--set", s))]

    def sweep_runs(self) -> tuple[Any, list[Any]]:
        """The sweep's parent MLflow run and its child runs, from the workdir's SQLite store."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{self.workdir / 'mlflow.db'}")
        exp = client.get_experiment_by_name("lvlm-unlearn")
        (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.job = 'sweep'")
        children = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        return parent, children

    def champion_run_id(self, registered_name: str) -> str:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{self.workdir / 'mlflow.db'}")
        return client.get_model_version_by_alias(registered_name, "champion").run_id


@contextmanager
def private_head(temp_dir: Path, timings: dict[str, float], **start: Any) -> Iterator[RayHead]:
    """A head (``start_head(temp_dir, **start)``) for the ``with`` block; then it and every process of
    its cluster stop, the temp dir goes, the timings are printed, and no process may be left."""
    t0 = time.monotonic()
    head = start_head(temp_dir, **start)
    timings["head"] = time.monotonic() - t0
    try:
        yield head
    finally:
        head.stop()
        left = [(p.pid, p.name()) for p in cluster_processes(temp_dir)]
        shutil.rmtree(temp_dir, ignore_errors=True)
        timings["total"] = time.monotonic() - t0
        print("timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert not left, f"processes of the test cluster survived teardown: {left}"


def run_logged(
    cmd: Sequence[str], head: RayHead, log_path: Path, timeout: float, what: str, **popen: Any
) -> tuple[int, str]:
    """Run a CLI command against ``head`` with its output in ``log_path`` (printed at the end, its tail);
    returns its exit status and output."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    try:
        rc = wait_process(proc, head, timeout, what)
    finally:
        print(log_path.read_text(errors="replace")[-3000:])
    return rc, log_path.read_text(errors="replace")


def dashboard_get(head: RayHead, token: str | None, path: str, **params: Any) -> requests.Response:
    """``GET`` a dashboard API path of ``head``, with the token as a Bearer header if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{head.dashboard_url}/{path}", params=params, headers=headers, timeout=30)
