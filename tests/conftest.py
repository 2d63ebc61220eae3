"""Shared fixtures: one real local Ray per test session, a real SQLite MLflow store per test."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Commands without a workdir log into console.user_log_dir(): here a temp folder, never the home folder.
os.environ["UNLEARN_LOG_DIR"] = tempfile.mkdtemp(prefix="unlearn-test-logs-")

CHECKOUT = Path(__file__).resolve().parents[1]


def checkout_state() -> tuple[list[str], list[tuple[str, int]]]:
    """The checkout's top-level names and the tree of its ``workdir/`` (where `make run` works): what a
    test may never write into (every test works in its own temp folder)."""
    top = sorted(p.name for p in CHECKOUT.iterdir() if p.name not in (".pytest_cache", ".ruff_cache"))
    wd = CHECKOUT / "workdir"
    tree = sorted((str(p.relative_to(wd)), p.stat().st_size) for p in wd.rglob("*")) if wd.is_dir() else []
    return top, tree


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``UNLEARN_TEST_ORDER=reverse`` runs the collected tests last to first: the suite must not depend
    on its order (e.g. global state an in-process DeepSpeed engine leaves behind)."""
    if os.environ.get("UNLEARN_TEST_ORDER") == "reverse":
        items.reverse()


@pytest.fixture(scope="session", autouse=True)
def checkout_untouched():
    """Fails the session when any test wrote into the checkout (e.g. a log under ./workdir/logs)."""
    before = checkout_state()
    yield
    after = checkout_state()
    added = sorted(set(after[0]) - set(before[0])) + sorted(set(after[1]) - set(before[1]))
    assert after == before, f"tests wrote into the checkout {CHECKOUT}: {added[:10]}"


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray per test module: a module that leaks actors or placement groups (a Tune
    sweep, a killed worker) cannot starve the next module's Ray Data tasks of CPUs."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def gloo_group():
    """A real one-rank gloo process group, what Ray Train sets up on a CPU worker (DDP, DeepSpeed)."""
    import torch.distributed as dist

    from tests.ray_head import free_ports

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{free_ports(1)[0]}", rank=0, world_size=1
        )
    yield
    if owned:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def tracking_uri_restored():
    """Each test leaves MLflow's tracking URI as it found it: ``mlflow.set_tracking_uri`` (which the
    pipeline calls) also writes ``$MLFLOW_TRACKING_URI``, so a test against a server it then stops
    would send every later test's preflight to a dead server."""
    import sys

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """A real SQLite tracking store and artifact folder in a temp dir."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return {"tracking_uri": uri, "artifacts": tmp_path / "artifacts"}
