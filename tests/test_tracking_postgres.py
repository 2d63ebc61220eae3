"""MLflow on a real database: a sweep logs through an ``mlflow server`` on PostgreSQL.

The test starts its own PostgreSQL (``initdb`` in a temp directory, a free port; as the ``postgres``
user when run as root) and a real ``mlflow server`` on it with ``--serve-artifacts``, runs a small real
sweep (2 tiny GA trials on a local Ray) whose driver and trials log to that server, and reads the
outcome back twice: through the server, and straight from PostgreSQL's tables (so it is in that
database, not in a SQLite file somewhere). The artifacts the trials logged are served by the server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.sweep import run_sweep
from tests.pipeline_fixtures import TINY_GA_SPACE as SPACE
from tests.pipeline_fixtures import write_sweep_inputs
from tests.tracking_servers import REQUIRE_ENV, MlflowServer, PostgresServer, postgres_bin_dir
from unlearn_core.config import RunConfig, with_overrides


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin_dir() is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(
                f"PostgreSQL server binaries not found and {REQUIRE_ENV} is set (.ci/run installs them)"
            )
        pytest.skip("PostgreSQL server binaries not found (Debian package `postgresql`)")
    with PostgresServer(fsync=False) as pg:
        yield pg


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-pg"), postgres.uri, workers=2)
    srv.start()
    yield srv
    srv.stop()


def test_concurrency_note_names_sqlite_limit_and_the_fix():
    n = tracking.SQLITE_MAX_WRITERS
    assert tracking.concurrency_note("sqlite:////tmp/x/mlflow.db", n) is None
    note = tracking.concurrency_note("sqlite:////tmp/x/mlflow.db", n + 1)
    assert note and f"{n + 1} trials at once" in note and "PostgreSQL" in note
    assert f"--max-concurrent {n}" in note and "tracking.tracking_uri=http" in note
    assert tracking.concurrency_note("http://head:5000", 1000) is None


@pytest.mark.slow
def test_sweep_logs_through_a_tracking_server_on_postgresql(server, postgres, tmp_path_factory, ray_local):
    inputs = write_sweep_inputs(tmp_path_factory.mktemp("pg-sweep"))
    space = inputs["root"] / "ga_tiny.yaml"
    space.write_text(SPACE)
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(inputs["workdir"]),
            "shards": str(inputs["shards"]),
            "train.batch_size": 8,
            "train.cpus_per_worker": 0.5,
            "tracking.tracking_uri": server.uri,
            "tracking.registered_model_name": "pg-sweep",
        },
    )
    lines: list[str] = []
    out = run_sweep(
        space,
        cfg,
        scheduler="none",
        max_concurrent=2,
        log=lambda *a: lines.append(" ".join(map(str, a))),
        champion_rule=None,
    )
    assert not any("WARNING" in line and "SQLite" in line for line in lines)  # a server: no SQLite warning
    assert not (Path(cfg.workdir) / "mlflow.db").exists()  # nothing went to the embedded store

    # Through the server: the parent and one child per trial, FINISHED, with their final metrics.
    client = MlflowClient(server.uri)
    parent = client.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(r.data.tags["trial_name"] for r in children) == ["trial_000", "trial_001"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all({"forget.leak_rate", "objective", "time/job_s"} <= set(r.data.metrics) for r in children)

    # Straight from PostgreSQL: the same runs, statuses and logged values are in its tables.
    ids = [parent.info.run_id, *(r.info.run_id for r in children)]
    marks = ",".join(f"'{i}'" for i in ids)
    rows = dict(postgres.query(f"SELECT run_uuid, status FROM runs WHERE run_uuid IN ({marks})"))
    assert rows == dict.fromkeys(ids, "FINISHED")
    for r in children:
        ((stored,),) = postgres.query(f"SELECT COUNT(*) FROM metrics WHERE run_uuid = '{r.info.run_id}'")
        history = sum(len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics)
        assert stored == history > 0
    ((versions,),) = postgres.query("SELECT COUNT(*) FROM model_versions WHERE name = 'pg-sweep'")
    assert versions == 1 and out.champion.trial in {"trial_000", "trial_001"}

    # Artifacts go through the server (--serve-artifacts) into its artifact folder.
    chosen = next(r for r in children if r.data.tags["trial_name"] == out.champion.trial)
    listed = {a.path for a in client.list_artifacts(chosen.info.run_id)}
    evals = [p for p in listed if p.startswith("eval-") and p.endswith(".json")]
    assert evals, listed
    local = client.download_artifacts(chosen.info.run_id, evals[0], str(inputs["root"] / "dl"))
    assert Path(local).read_text().startswith("{")
    assert list((server.root / "artifacts").rglob(evals[0]))
