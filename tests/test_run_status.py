"""A tracked run ends as it really ended: FINISHED, FAILED (error tagged) or KILLED, on a real SQLite store,
and an unlearning run whose Ray Train worker fails shows FAILED with the worker's error."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.shards import shard_records
from pipelines.train.unlearn import run_unlearn
from tests.pipeline_fixtures import save_tiny_model, write_tiny_records
from unlearn_core.config import RunConfig, with_overrides


def _new_run(uri: str, tmp_path: Path) -> str:
    exp = tracking.ensure_experiment(uri, "status", tmp_path)
    return tracking.open_run(uri, exp, run_name="r", tags={"job": "test"}, params={"a": "1"})


def test_run_status_finished_failed_killed(tmp_path, mlflow_store):
    uri = mlflow_store["tracking_uri"]
    client = MlflowClient(uri)
    ok, bad, stopped, left, prepared = (_new_run(uri, tmp_path) for _ in range(5))
    with tracking.run_status(uri, ok):
        pass
    with pytest.raises(RuntimeError), tracking.run_status(uri, bad):
        raise RuntimeError("boom in training")
    with pytest.raises(KeyboardInterrupt), tracking.run_status(uri, stopped):
        raise KeyboardInterrupt
    with pytest.raises(RuntimeError), tracking.run_status(uri, left, settle_failure=False):
        raise RuntimeError("the sweep decides")
    with tracking.run_status(uri, prepared, finish=False):
        pass
    status = {r: client.get_run(r).info.status for r in (ok, bad, stopped, left, prepared)}
    assert status == {ok: "FINISHED", bad: "FAILED", stopped: "KILLED", left: "RUNNING", prepared: "RUNNING"}
    assert client.get_run(bad).data.tags[tracking.ERROR_TAG] == "RuntimeError: boom in training"
    assert client.get_run(left).data.tags[tracking.ERROR_TAG] == "RuntimeError: the sweep decides"
    assert tracking.ERROR_TAG not in client.get_run(ok).data.tags
    assert client.get_run(ok).data.params == {"a": "1"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_local) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("status")
    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    return {"shards": root / "shards", "model": save_tiny_model(root / "shards", root / "model")}


@pytest.mark.slow
def test_run_failing_inside_the_train_worker_ends_failed_with_the_error(inputs, tmp_path, mlflow_store):
    """LoRA on modules the model does not have: the driver side accepts the config, the Ray Train worker
    raises while it builds the model. The run must not show FINISHED (it did when the run was closed
    before ``fit``): FAILED, the worker's error tagged, no final metrics."""
    uri = mlflow_store["tracking_uri"]
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(tmp_path / "wd"),
            "shards": str(inputs["shards"]),
            "model.spec": str(inputs["model"]),
            "method.name": "ga",
            "train.steps": 2,
            "train.eval_max_samples": 4,
            "train.batch_size": 4,
            "train.torch_threads": 1,
            "model.lora": True,
            "model.lora_targets": ["no_such_proj"],
            "train.launcher": "ray_train",  # the error is raised inside a Ray Train worker actor
            "tracking.tracking_uri": uri,
        },
    )
    with pytest.raises(Exception, match="no_such_proj"):
        run_unlearn(cfg, log=lambda *a: None)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.job = 'unlearn'")
    assert run.info.status == "FAILED"
    assert "no_such_proj" in run.data.tags[tracking.ERROR_TAG]
    assert "before.forget.leak_rate" in run.data.metrics  # logged before training started
    assert "forget.leak_rate" not in run.data.metrics  # no final evaluation of a model that does not exist
    assert tracking.SHA_TAG not in run.data.tags
