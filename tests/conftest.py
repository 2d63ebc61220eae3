"""Shared fixtures: one real local Ray per test session, a real SQLite MLflow store per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """A real SQLite tracking store and artifact folder in a temp dir."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return {"tracking_uri": uri, "artifacts": tmp_path / "artifacts"}
