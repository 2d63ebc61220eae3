"""Real tracking servers for tests and benches: a private PostgreSQL and an ``mlflow server`` on it.

``PostgresServer`` is a throwaway PostgreSQL cluster: ``initdb`` into a fresh temp directory, the
server on a free loopback port (its socket in that directory too), trust authentication on loopback
only, one database. PostgreSQL refuses to run as root, so as root (CI) every server binary runs as the
``postgres`` system user (``runuser``), which owns the directory. ``MlflowServer`` is ``mlflow server``
on any backend store URI, with ``--serve-artifacts`` to a folder; it can be killed (an outage as a
crash) and started again on the same port and store.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.ray_head import free_ports

PG_DIRS = ("/usr/lib/postgresql",)  # Debian/Ubuntu: /usr/lib/postgresql/<major>/bin
REQUIRE_ENV = "UNLEARN_REQUIRE_POSTGRES"  # set by .ci/run: missing binaries fail instead of skipping


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def postgres_bin_dir() -> Path | None:
    """The newest PostgreSQL server binaries (``initdb``, ``pg_ctl``; symlinks on PATH resolved), or None."""
    found = [
        d / "bin"
        for root in PG_DIRS
        if Path(root).is_dir()
        for d in Path(root).iterdir()
        if (d / "bin" / "initdb").is_file() and (d / "bin" / "pg_ctl").is_file()
    ]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


class PostgresServer:
    """A private PostgreSQL server in a temp directory on a free port; ``uri`` is its SQLAlchemy URI."""

    def __init__(self, database: str = "mlflow", fsync: bool = True) -> None:
        bindir = postgres_bin_dir()
        if bindir is None:
            raise FileNotFoundError(
                "PostgreSQL server binaries not found (initdb, pg_ctl): install the Debian package "
                "`postgresql` (.ci/run does)"
            )
        self.bindir = bindir
        self.database = database
        self.fsync = fsync  # off: faster, and what a crash of the machine would lose (tests only)
        self.port = free_ports(1)[0]
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))  # short: the socket path lives here
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_root = os.geteuid() == 0
        if self.as_root:  # the postgres user owns (and can reach) the whole directory
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o755)

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root)
        if out.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}{out.stderr}{tail}")
        return out

    def start(self) -> PostgresServer:
        """``initdb``, start the server (waiting until it accepts connections), create the database."""
        try:
            self._run(
                ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
            )
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                f"-c fsync={'on' if self.fsync else 'off'}"
            )
            self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "120",
                    "start",
                ]
            )
            import psycopg

            conn = psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
            conn.close()
        except BaseException:
            self.stop()
            raise
        return self

    def query(self, sql: str) -> list[tuple]:
        """Rows of ``sql`` read straight from PostgreSQL (psycopg), not through MLflow."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=self.database) as conn:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            try:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"WARNING: stopping PostgreSQL in {self.root}: {err}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 over ``store`` (any backend URI), serving artifacts from
    ``root/artifacts``; stopped as a crash (SIGKILL) and started again on the same port and store."""

    def __init__(self, root: Path, store: str | None = None, workers: int = 1) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = store or f"sqlite:///{root / 'server.db'}"
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 180.0) -> float:
        """Start it and wait until ``/health`` answers; returns the seconds that took."""
        t0 = time.perf_counter()
        self.starts += 1
        log_path = self.root / f"server-{self.starts}.log"
        exe = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(exe),
            "server",
            "--backend-store-uri",
            self.store,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with log_path.open("wb") as log:
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
        tail = log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"mlflow server did not come up on {self.uri}:\n{tail}")

    def stop(self) -> None:
        """An outage as a crash: SIGKILL the server's process group (the CLI and its uvicorn workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(20)
        deadline = time.monotonic() + 20
        while listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.proc = None
