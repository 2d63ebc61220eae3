"""MLflow under a sweep's write load: 8, 32 and 64 concurrent writer processes against (a) a SQLite
file, (b) an ``mlflow server`` on SQLite, (c) an ``mlflow server`` on PostgreSQL (both servers with
``--serve-artifacts`` and 4 workers, as cluster.yaml's head runs it).

Each writer does what one sweep trial does to MLflow, back to back: create its run (with the trial's
tags), log its params (50, one batch), log ``BATCHES`` metric batches of ``METRICS`` values (its
reports), log its final metrics, end the run. Writers start together (a barrier) from one parent that
has already imported MLflow (fork), so the load is the writes and not the imports.

Per backend and writer count: calls that raised (errors, after MLflow's own retries), writes lost
(values of calls that returned without error, read back from the database itself and counted), p99
latency of a metric batch, and metric batches per second over the whole run (the capacity: a sweep of
1,000 trials reporting every 10 s needs 100/s). Then what MLflow logging adds to a report inside a
trial: ``MlflowReportCallback.after_report`` in place (the old way) and with its background sender,
against the PostgreSQL server.

Run (under the heavy lock; ~15 min on 2 shared cores):
    flock /tmp/lvlm-heavy.lock .venv/bin/python bench/mlflow_load.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

WRITERS = (8, 32, 64) if not common.QUICK else (8,)
BATCHES = 20  # reports per trial
METRICS = 30  # values per report (train/* and eval/* of a trial's report)
PARAMS = 50
REPORTS = 200  # reports timed inside a "trial" for the per-report cost


def writer(uri: str, exp_id: str, index: int, barrier: Any, out: Any) -> None:
    """One trial's writes, timed; puts its record on ``out``."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    errors: list[str] = []
    latencies: list[float] = []
    ok_values = 0
    barrier.wait()
    t_start = time.perf_counter()
    run_id = None
    try:
        run_id = client.create_run(exp_id, run_name=f"w{index}", tags={"trial_name": f"w{index}"}).info.run_id
        client.log_batch(run_id, params=[Param(f"p{k}", str(k)) for k in range(PARAMS)])
        for b in range(BATCHES + 1):  # the reports, then the final metrics
            now = int(time.time() * 1000)
            batch = [Metric(f"m{k}", float(b * k), now, b) for k in range(METRICS)]
            t0 = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=batch)
                ok_values += len(batch)
                latencies.append(time.perf_counter() - t0)
            except Exception as err:  # noqa: BLE001 - counted
                errors.append(f"{type(err).__name__}: {str(err)[:160]}")
        client.set_terminated(run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001 - counted
        errors.append(f"{type(err).__name__}: {str(err)[:160]}")
    out.put(
        {
            "run_id": run_id,
            "errors": errors,
            "latencies": latencies,
            "ok_values": ok_values,
            "seconds": time.perf_counter() - t_start,
        }
    )


def stored_values(store: Any, run_ids: list[str]) -> dict[str, int]:
    """Metric rows per run, read from the database itself (not through MLflow)."""
    ids = [r for r in run_ids if r]
    if not ids:
        return {}
    marks = ",".join(f"'{r}'" for r in ids)
    sql = f"SELECT run_uuid, COUNT(*) FROM metrics WHERE run_uuid IN ({marks}) GROUP BY run_uuid"
    if isinstance(store, Path):
        with sqlite3.connect(store) as conn:
            return dict(conn.execute(sql).fetchall())
    return dict(store.query(sql))


def server_cpu_s(server: Any, pg: Any) -> dict[str, float]:
    """CPU seconds so far of the tracking server's processes and of PostgreSQL's (alive now)."""
    import psutil

    def total(procs: list[Any]) -> float:
        out = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                out += t.user + t.system
            except psutil.Error:
                continue
        return out

    found: dict[str, float] = {}
    if server is not None and server.proc is not None:
        root = psutil.Process(server.proc.pid)
        found["server"] = total([root, *root.children(recursive=True)])
    if pg is not None:
        marker = str(pg.root)
        mains = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
        found["postgres"] = total([q for p in mains for q in (p, *p.children(recursive=True))])
    return found


def load_run(
    uri: str, store: Any, writers: int, tag: str, server: Any = None, pg: Any = None
) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    exp_id = MlflowClient(uri).create_experiment(f"load-{tag}-{writers}")
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(uri, exp_id, i, barrier, out)) for i in range(writers)]
    for p in procs:
        p.start()
    cpu0 = server_cpu_s(server, pg)
    barrier.wait()
    t0 = time.perf_counter()
    records = [out.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - t0
    cpu1 = server_cpu_s(server, pg)
    for p in procs:
        p.join(60)
    stored = stored_values(store, [r["run_id"] for r in records])
    lost = sum(max(0, r["ok_values"] - stored.get(r["run_id"], 0)) for r in records if r["run_id"])
    lost += sum(r["ok_values"] for r in records if not r["run_id"])
    lat = sorted(x for r in records for x in r["latencies"])
    errors = [e for r in records for e in r["errors"]]
    batches = sum(len(r["latencies"]) for r in records)
    return {
        "writers": writers,
        "runs_created": sum(1 for r in records if r["run_id"]),
        "errors": len(errors),
        "error_kinds": sorted({e.split(":")[0] for e in errors}),
        "error_example": errors[0] if errors else "",
        "lost_values": lost,
        "ok_values": sum(r["ok_values"] for r in records),
        "stored_values": sum(stored.values()),
        "p50_s": lat[len(lat) // 2] if lat else float("nan"),
        "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "batches_per_s": batches / wall,
        "wall_s": wall,
        # CPU per metric batch of the server and of PostgreSQL (what a core can serve: 1000 / ms)
        **{f"{k}_cpu_ms_per_batch": 1000 * (cpu1[k] - cpu0.get(k, 0.0)) / max(batches, 1) for k in cpu1},
    }


def per_report_cost(uri: str) -> dict[str, Any]:
    """What ``after_report`` costs the training loop per report: in place vs with the background sender."""
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import MlflowReportCallback

    client = MlflowClient(uri)
    exp = client.create_experiment("per-report")
    out: dict[str, Any] = {}
    for background in (False, True):
        run_id = client.create_run(exp).info.run_id
        cb = MlflowReportCallback(uri, run_id, background=background)
        times = []
        for step in range(1, REPORTS + 1):
            m = {"step": float(step), **{f"k{k}": float(k * step) for k in range(METRICS)}}
            t0 = time.perf_counter()
            cb.after_report(None, [m], None)
            times.append(time.perf_counter() - t0)
            time.sleep(0.01)  # the loop's own work between reports
        t0 = time.perf_counter()
        assert cb.flush()
        drain = time.perf_counter() - t0
        stored = len(client.get_metric_history(run_id, "train/k1"))
        times.sort()
        out["background" if background else "in place"] = {
            "median_ms": 1000 * times[len(times) // 2],
            "p99_ms": 1000 * times[int(len(times) * 0.99)],
            "max_ms": 1000 * times[-1],
            "flush_s": drain,
            "stored_reports": stored,
        }
    return out


def main() -> None:
    from tests.tracking_servers import MlflowServer, PostgresServer

    common.header(
        "bench/mlflow_load.py: concurrent MLflow writers on SQLite, server+SQLite, server+PostgreSQL"
    )
    root = common.BENCH_DIR / "mlflow_load"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    results: dict[str, Any] = {"config": {"writers": WRITERS, "batches": BATCHES, "metrics": METRICS}}
    rows = []
    pg = PostgresServer()
    servers: list[Any] = []
    try:
        # (a) the SQLite file every process opens itself (the embedded default, as a trial on the head would)
        db = root / "file" / "mlflow.db"
        db.parent.mkdir()
        from mlflow.tracking import MlflowClient

        MlflowClient(f"sqlite:///{db}").search_experiments()  # create the schema once, before the writers
        backends: list[tuple[str, str, Any, Any, Any]] = [("SQLite file", f"sqlite:///{db}", db, None, None)]
        # (b) a server on SQLite, (c) a server on PostgreSQL
        lite = MlflowServer(root / "server-sqlite", workers=4)
        servers.append(lite)
        print(f"mlflow server on SQLite up in {lite.start():.0f} s")
        backends.append(("server on SQLite", lite.uri, root / "server-sqlite" / "server.db", lite, None))
        pg.start()
        pgs = MlflowServer(root / "server-pg", pg.uri, workers=4)
        servers.append(pgs)
        print(f"mlflow server on PostgreSQL up in {pgs.start():.0f} s")
        backends.append(("server on PostgreSQL", pgs.uri, pg, pgs, pg))
        for name, uri, store, srv, db_server in backends:
            for w in WRITERS:
                common.load(f"{name}, {w} writers")
                r = load_run(uri, store, w, name.split()[-1].lower(), srv, db_server)
                r["backend"] = name
                results.setdefault("runs", []).append(r)
                print(
                    f"  {name}, {w} writers: {r['errors']} errors {r['error_kinds']}, {r['lost_values']} lost, "
                    f"p99 {r['p99_s']:.3f} s, {r['batches_per_s']:.0f} batches/s",
                    flush=True,
                )
                rows.append(
                    [
                        name,
                        w,
                        f"{r['runs_created']}/{w}",
                        r["errors"],
                        f"{r['lost_values']} of {r['ok_values']}",
                        f"{r['p50_s']:.3f}",
                        f"{r['p99_s']:.3f}",
                        f"{r['batches_per_s']:.0f}",
                        f"{r['server_cpu_ms_per_batch']:.1f}" if "server_cpu_ms_per_batch" in r else "-",
                        f"{r['postgres_cpu_ms_per_batch']:.1f}" if "postgres_cpu_ms_per_batch" in r else "-",
                    ]
                )
        print(f"\n{BATCHES + 1} metric batches of {METRICS} values per writer, back to back")
        results["table"] = common.table(
            [
                "backend",
                "writers",
                "runs created",
                "errors",
                "values lost (of stored OK)",
                "p50 batch s",
                "p99 batch s",
                "batches/s",
                "server CPU ms/batch",
                "PostgreSQL CPU ms/batch",
            ],
            rows,
        )
        if results["runs"] and (ex := next((r["error_example"] for r in results["runs"] if r["errors"]), "")):
            print(f"first error seen: {ex}")
        common.load("per-report cost")
        cost = per_report_cost(pgs.uri)
        results["per_report"] = cost
        print(
            f"\nwhat MLflow logging adds to one report of {METRICS} values inside a trial (server on PostgreSQL)"
        )
        results["per_report_table"] = common.table(
            ["after_report", "median ms", "p99 ms", "max ms", "final flush s", "reports stored"],
            [
                [
                    k,
                    f"{v['median_ms']:.2f}",
                    f"{v['p99_ms']:.2f}",
                    f"{v['max_ms']:.1f}",
                    f"{v['flush_s']:.2f}",
                    v["stored_reports"],
                ]
                for k, v in cost.items()
            ],
        )
    finally:
        for s in servers:
            s.stop()
        pg.stop()
    print(common.load_summary())
    common.save("mlflow_load", results)


if __name__ == "__main__":
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    main()
