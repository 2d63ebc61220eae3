"""Sweep orchestration at scale: the project's sweep path with N = 8, 64, 256 and 1,024 trials on a fake
multi-node autoscaling cluster, logging to an MLflow server on PostgreSQL.

What runs is ``pipelines.sweep.run_sweep`` as ``unlearn sweep`` runs it (its own process, joined to the
cluster through ``RAY_ADDRESS``): the Tune driver and its callbacks, ASHA, each trial's MLflow child run
under the parent run, the trial's Train callbacks (live curves, Tune reports), checkpoints, export,
scoring, placement-group release, the results table and Pareto plot, champion selection and
registration, and the sweep's resume state. Only the training worker is replaced by
``sweep_standin.standin_loop``: the project's own loop over a one-weight model, so a trial makes the
same reports (names and count) as a real one; the bench checks that against one real trial first.
One trial in 50 fails on purpose (FAILED runs are counted too).

The cluster: Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``; each node a real raylet on this
machine) with a 0-CPU head and up to ``--nodes`` worker nodes of ``--cpus-per-node`` CPUs, started
empty: a warm-up sweep makes the autoscaler add them, then each N runs on the warm cluster. Compute
timings on it mean nothing; the driver's and the tracking server's costs per trial do.

Per N: wall time of the sweep, the driver's resident memory and open file descriptors before and
after, placement groups left, MLflow child runs and their end status against Tune's (nothing lost),
each trial's completion time (a within-run fit of completion time against trial index), the CPU
seconds of each process group (driver, trial actors and Ray, MLflow server, PostgreSQL), and the
trials' own phase times. Fit over N: wall = a + b*N.

Run (under the heavy lock; ~30 min on 2 shared cores):
    flock /tmp/lvlm-heavy.lock .venv/bin/python bench/sweep_scale.py
    ... --n 8,64 --profile   (py-spy on the driver at the largest N; slower)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import yaml  # noqa: E402

NODE_TYPE = "cpu_worker"
EXPERIMENT = "sweep-scale"
SPACE = {
    "method": "ga",
    "num_samples": 8,
    "base": {"train.eval_every": 5, "train.eval_max_samples": 8},
    "space": {"train.lr": {"loguniform": [1.0e-5, 1.0e-3]}, "train.steps": {"choice": [10, 20]}},
}
FAIL_ONE_IN = 50
STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


# --------------------------------------------------------------------------- the sweep driver (child)


def _sampler(samples: list[tuple[float, int, int]], stop: threading.Event) -> None:
    import psutil

    me = psutil.Process()
    while not stop.wait(1.0):
        samples.append((time.time(), me.memory_info().rss, me.num_fds()))


def drive(args: argparse.Namespace) -> None:
    """One sweep, in this process (run by ``main`` as a subprocess with ``RAY_ADDRESS`` set)."""
    import functools
    import gc

    import psutil
    import ray
    import ray.cloudpickle as cloudpickle
    import sweep_standin

    from pipelines.ray_env import ensure_ray
    from pipelines.sweep import run_sweep
    from unlearn_core.config import RunConfig, with_overrides

    ensure_ray()
    cloudpickle.register_pickle_by_value(sweep_standin)
    loop = (
        None
        if args.real
        else functools.partial(
            sweep_standin.standin_loop, step_keys=tuple(args.step_keys.split(",")), fail_one_in=FAIL_ONE_IN
        )
    )
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": args.workdir,
            "shards": args.shards,
            "model.spec": args.vanilla,
            "train.cpus_per_worker": 1,
            "train.torch_threads": 1,
            "train.launcher": "in_process",
            "tracking.tracking_uri": args.tracking_uri,
            "tracking.experiment": EXPERIMENT,
            "tracking.log_model": False,
            "tracking.registered_model_name": f"sweep-scale-{args.tag}",
        },
    )
    lines: list[tuple[float, str]] = []

    def log(*parts: Any) -> None:
        lines.append((time.time(), " ".join(str(p) for p in parts)))

    me = psutil.Process()
    gc.collect()
    rss0, fds0 = me.memory_info().rss, me.num_fds()
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    threading.Thread(target=_sampler, args=(samples, stop), daemon=True).start()
    t0 = time.time()
    out = run_sweep(
        args.space,
        cfg,
        num_samples=args.n,
        scheduler=args.scheduler,
        max_concurrent=args.concurrent,
        log=log,
        table=False,
        loop=loop,
    )
    wall = time.time() - t0
    stop.set()
    gc.collect()
    time.sleep(2.0)
    rss1, fds1 = me.memory_info().rss, me.num_fds()
    groups = {k: v["state"] for k, v in ray.util.placement_group_table().items() if v["state"] != "REMOVED"}
    sweep_dir = Path(out.sweep_dir)
    ends = {}
    for name in out.trials:
        result = sweep_dir / name / "result.json"
        results = result.read_text().splitlines() if result.is_file() else []
        last = results[-1] if results else ""  # a trial that failed before its first report has none
        ends[name] = json.loads(last).get("timestamp") if last.strip() else None
    fit_start = next((t for t, line in lines if "concurrent trial(s)" in line), t0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    data = {
        "n": args.n,
        "tag": args.tag,
        "wall_s": wall,
        "fit_start_s": fit_start - t0,
        "t0": t0,
        "rss0": rss0,
        "rss1": rss1,
        "fds0": fds0,
        "fds1": fds1,
        "samples": samples,
        "groups_left": groups,
        "driver_cpu_s": usage.ru_utime + usage.ru_stime,
        "parent_run_id": out.parent_run_id,
        "sweep_dir": str(sweep_dir),
        "champion": out.champion.trial,
        "artifacts": out.artifacts,
        "trials": {
            n: {
                "status": t.status,
                "run_id": t.run_id,
                "step": t.step,
                "timing": t.timing,
                "end": ends.get(n),
            }
            for n, t in out.trials.items()
        },
        "log": [line for _, line in lines][-40:],
    }
    Path(args.out).write_text(json.dumps(data, default=str))


# --------------------------------------------------------------------------- the bench (parent)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return out


class Groups:
    """The processes whose CPU time the bench splits: Ray (head, nodes, trial actors), MLflow server, PostgreSQL."""

    def __init__(self, ray_temp: Path, mlflow_server: Any, pg_root: Path | None) -> None:
        self.ray_temp, self.server, self.pg_root = ray_temp, mlflow_server, pg_root

    def pids(self) -> dict[str, list[int]]:
        import psutil

        from tests.ray_head import cluster_processes

        out: dict[str, list[int]] = {"ray": [p.pid for p in cluster_processes(self.ray_temp)]}
        if self.server is not None and self.server.proc is not None:
            root = psutil.Process(self.server.proc.pid)
            out["mlflow_server"] = [root.pid, *(c.pid for c in root.children(recursive=True))]
        if self.pg_root is not None:
            out["postgres"] = [
                p.pid
                for p in psutil.process_iter(["cmdline", "username"])
                if p.info["username"] in ("postgres", os.environ.get("USER", ""))
                and "postgres" in " ".join(p.info["cmdline"] or [])[:200]
                and _pg_child(p, self.pg_root)
            ]
        return out

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {k: cpu_seconds(v) for k, v in self.pids().items()}


def _pg_child(proc: Any, root: Path) -> bool:
    """A process of our PostgreSQL: the postmaster names our data dir; its backends are its children."""
    import psutil

    try:
        chain = [proc, *proc.parents()]
        return any(str(root) in " ".join(p.cmdline()) for p in chain)
    except psutil.Error:
        return False


def cpu_delta(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds per group between two snapshots (processes alive at the end; new ones from 0)."""
    return {g: sum(v - before.get(g, {}).get(pid, 0.0) for pid, v in after[g].items()) for g in after}


def run_driver(
    n: int,
    tag: str,
    *,
    ctx: dict[str, Any],
    real: bool = False,
    scheduler: str = "asha",
    profile: Path | None = None,
) -> dict[str, Any]:
    out = ctx["root"] / f"driver-{tag}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--drive",
        "--n",
        str(n),
        "--tag",
        tag,
        "--out",
        str(out),
        "--space",
        str(ctx["space"]),
        "--workdir",
        str(ctx["root"] / f"wd-{tag}"),
        "--shards",
        str(ctx["inputs"].shards),
        "--vanilla",
        str(ctx["inputs"].vanilla),
        "--tracking-uri",
        ctx["tracking_uri"],
        "--concurrent",
        str(ctx["concurrent"]),
        "--scheduler",
        scheduler,
        "--step-keys",
        ctx.get("step_keys", "loss,grad_norm"),
        *(["--real"] if real else []),
    ]
    shutil.rmtree(ctx["root"] / f"wd-{tag}", ignore_errors=True)
    log_path = ctx["root"] / f"driver-{tag}.log"
    before = ctx["groups"].snapshot()
    t0 = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=ctx["env"], stdout=log, stderr=subprocess.STDOUT, cwd=ctx["root"])
    spy = None
    if profile is not None:
        time.sleep(5)
        spy = subprocess.Popen(
            [common.pyspy_bin(), "record", "--pid", str(proc.pid), "--rate", "20", "--format", "raw",
             "--nonblocking", "-o", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    rc = proc.wait()
    if spy is not None:
        spy.wait(60)
    elapsed = time.time() - t0
    if rc != 0 or not out.is_file():
        raise RuntimeError(
            f"sweep driver {tag} failed ({rc}):\n{log_path.read_text(errors='replace')[-5000:]}"
        )
    data = json.loads(out.read_text())
    data["process_s"] = elapsed
    data["cpu_s"] = {"driver": data["driver_cpu_s"], **cpu_delta(before, ctx["groups"].snapshot())}
    return data


def mlflow_check(uri: str, data: dict[str, Any]) -> dict[str, Any]:
    """Every trial's child run under the parent, with the end status Tune gave it and, when it
    finished, its final metrics: counted from the server (nothing lost, nothing twice)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{data['parent_run_id']}'",
            max_results=1000,
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    by_name: dict[str, list[Any]] = {}
    for r in runs:
        by_name.setdefault(r.data.tags.get("trial_name", "?"), []).append(r)
    status_counts: dict[str, int] = {}
    missing, twice, wrong, no_final = [], [], [], []
    for name, t in data["trials"].items():
        found = by_name.get(name, [])
        if not found:
            missing.append(name)
            continue
        if len(found) > 1:
            twice.append(name)
        run = found[0]
        status_counts[run.info.status] = status_counts.get(run.info.status, 0) + 1
        if run.info.status != STATUS[t["status"]] or run.info.run_id != t["run_id"]:
            wrong.append((name, t["status"], run.info.status))
        if t["status"] == "completed" and not {"forget.leak_rate", "objective", "time/job_s"} <= set(
            run.data.metrics
        ):
            no_final.append(name)
    parent = client.get_run(data["parent_run_id"])
    return {
        "trials": len(data["trials"]),
        "child_runs": len(runs),
        "status": status_counts,
        "tune_status": {s: sum(t["status"] == s for t in data["trials"].values()) for s in STATUS},
        "missing": missing,
        "twice": twice,
        "wrong_status": wrong,
        "finished_without_final_metrics": no_final,
        "parent_status": parent.info.status,
        "parent_counts": {k: v for k, v in parent.data.metrics.items() if k.startswith("trials_")},
        "champion_tag": parent.data.tags.get("champion_trial"),
    }


def metric_shape(uri: str, run_id: str) -> dict[str, int]:
    """A run's metric names and how many points each has."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {k: len(client.get_metric_history(run_id, k)) for k in client.get_run(run_id).data.metrics}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``; returns (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def in_run_fit(data: dict[str, Any]) -> tuple[float, float]:
    """Completion time of the k-th trial to end (from the sweep's start) against k, over the middle
    80% of trials (start-up and tail excluded): the marginal seconds per trial inside one sweep."""
    ends = sorted(t["end"] - data["t0"] for t in data["trials"].values() if t["end"])
    lo, hi = int(len(ends) * 0.1), max(int(len(ends) * 0.9), int(len(ends) * 0.1) + 2)
    ks = list(range(lo, min(hi, len(ends))))
    if len(ks) < 2:
        return float("nan"), float("nan")
    return fit_line([float(k) for k in ks], [ends[k] for k in ks])


# What the driver's CPU time goes to: the first category whose marker a sampled stack contains.
PROFILE_CATEGORIES = (
    (
        "Tune experiment-state snapshots",
        ("experiment_state", "_checkpoint_experiment", "save_to_dir", "checkpoint_manager"),
    ),
    ("Tune logger callbacks (CSV, JSON, TensorBoard)", ("ray/tune/logger/",)),
    ("the sweep's Tune callbacks", ("pipelines/sweep/train_groups.py", "pipelines/train/progress.py")),
    ("MLflow calls of the driver (parent run, closing runs, report, champion)", ("mlflow/",)),
    ("Tune bookkeeping (controller, scheduler, search, results)", ("ray/tune/",)),
    ("sweep set-up and report (inputs, evaluation, plots)", ("pipelines/",)),
    ("Ray core (GCS, object store, actors)", ("ray/_private/", "ray/_raylet", "ray/actor.py")),
    ("imports", ("importlib",)),
)


def profile_breakdown(path: Path, n: int, rate: int = 20) -> list[list[str]]:
    """The driver's sampled CPU time (py-spy, active samples) by category, in seconds and ms/trial."""
    totals: dict[str, int] = {}
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        cat = next((c for c, marks in PROFILE_CATEGORIES if any(m in frames for m in marks)), "other")
        totals[cat] = totals.get(cat, 0) + int(count)
    all_samples = sum(totals.values()) or 1
    order = [c for c, _ in PROFILE_CATEGORIES] + ["other"]
    return [
        [
            c,
            f"{100 * totals[c] / all_samples:.1f}%",
            f"{totals[c] / rate:.1f}",
            f"{1000 * totals[c] / rate / n:.1f}",
        ]
        for c in order
        if totals.get(c)
    ]


def median(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    return values[len(values) // 2] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--real", action="store_true", help=argparse.SUPPRESS)
    for name in ("tag", "out", "space", "workdir", "shards", "vanilla", "tracking-uri", "step-keys"):
        ap.add_argument(f"--{name}", default="", help=argparse.SUPPRESS)
    ap.add_argument("--scheduler", default="asha", help=argparse.SUPPRESS)
    ap.add_argument("--n", default="8,64,256,1024", help="trial counts, comma-separated")
    ap.add_argument("--tracking", choices=("postgres", "sqlite-server"), default="postgres")
    ap.add_argument("--nodes", type=int, default=3, help="worker nodes at most")
    ap.add_argument("--cpus-per-node", type=int, default=4)
    ap.add_argument("--concurrent", type=int, default=8, help="trials at once (each holds 1 CPU)")
    ap.add_argument("--server-workers", type=int, default=4, help="mlflow server worker processes")
    ap.add_argument("--profile", action="store_true", help="py-spy the driver at the largest N")
    args = ap.parse_args()
    if args.drive:
        args.n = int(args.n)
        drive(args)
        return
    bench(args)


def bench(args: argparse.Namespace) -> None:
    from tests.ray_head import fake_cluster
    from tests.tracking_servers import MlflowServer, PostgresServer

    ns = [int(x) for x in args.n.split(",")]
    common.header("bench/sweep_scale.py: the sweep path at N trials on a fake autoscaling cluster")
    inputs = common.inputs()
    import ray

    ray.shutdown()  # building the inputs may have started a local Ray here: the sweeps run on the cluster
    root = common.BENCH_DIR / "sweep_scale"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    space = root / "ga_scale.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))

    pg = PostgresServer() if args.tracking == "postgres" else None
    server = None
    results: dict[str, Any] = {
        "config": {
            k: v
            for k, v in vars(args).items()
            if k in ("n", "tracking", "nodes", "cpus_per_node", "concurrent", "server_workers")
        }
    }
    stack = contextlib.ExitStack()
    try:
        if pg is not None:
            pg.start()
        server = MlflowServer(root / "mlflow", pg.uri if pg else None, workers=args.server_workers)
        print(
            f"mlflow server on {'PostgreSQL' if pg else 'SQLite'} up in {server.start():.0f} s: {server.uri}"
        )
        cluster = fake_cluster(
            {NODE_TYPE: {"CPU": args.cpus_per_node}},
            max_workers=args.nodes,
            idle_minutes=30,
            name="sweep-scale",
        )
        head = stack.enter_context(cluster)
        print(f"fake cluster head up: {head.gcs_address}, up to {args.nodes} x {args.cpus_per_node} CPUs")
        ctx = {
            "root": root,
            "space": space,
            "inputs": inputs,
            "tracking_uri": server.uri,
            "concurrent": args.concurrent,
            "env": {**head.env, "RAY_ADDRESS": head.gcs_address, "PYTHONPATH": str(REPO)},
            "groups": Groups(head.temp_dir, server, pg.root if pg else None),
        }
        # 1. One real trial (the project's training loop): the metric names and counts a trial logs.
        common.load("reference trial")
        ref = run_driver(1, "reference", ctx=ctx, real=True, scheduler="none")
        ((ref_name, ref_trial),) = ref["trials"].items()
        ref_shape = metric_shape(server.uri, ref_trial["run_id"])
        ctx["step_keys"] = ",".join(
            sorted(
                k[len("train/") :]
                for k in ref_shape
                if k.startswith("train/") and k not in ("train/steps_per_s", "train/final_eval_s")
            )
        )
        print(
            f"reference trial ({ref_trial['status']}, {ref_trial['step']} steps): {len(ref_shape)} metrics; step keys {ctx['step_keys']}"
        )
        # 2. Warm-up: the autoscaler adds the worker nodes; not counted.
        common.load("warm-up")
        warm = run_driver(2 * args.concurrent, "warmup", ctx=ctx)
        print(f"warm-up sweep of {warm['n']} trials (nodes added): {warm['wall_s']:.0f} s")
        same = [
            t
            for t in warm["trials"].values()
            if t["status"] == "completed" and t["step"] == ref_trial["step"]
        ]
        standin_shape = metric_shape(server.uri, same[0]["run_id"]) if same else {}
        results["reports_like_a_real_trial"] = {
            "reference": ref_shape,
            "standin": standin_shape,
            "same": standin_shape == ref_shape,
        }
        print(
            f"stand-in trial logs the same metric names and point counts as the real one: {standin_shape == ref_shape}"
        )
        if standin_shape and standin_shape != ref_shape:
            diff = {
                k: (ref_shape.get(k), standin_shape.get(k))
                for k in set(ref_shape) | set(standin_shape)
                if ref_shape.get(k) != standin_shape.get(k)
            }
            print(f"  differences (real, stand-in): {diff}")
        # 3. The counted sweeps.
        runs = []
        for n in ns:
            common.load(f"sweep N={n}")
            profile = root / f"pyspy-driver-{n}.txt" if args.profile and n == max(ns) else None
            data = run_driver(n, f"n{n}", ctx=ctx, profile=profile)
            data["mlflow"] = mlflow_check(server.uri, data)
            data["in_run"] = in_run_fit(data)
            runs.append(data)
            m = data["mlflow"]
            print(
                f"  N={n}: wall {data['wall_s']:.0f} s (Tuner from {data['fit_start_s']:.0f} s), in-run b "
                f"{data['in_run'][1]:.3f} s/trial; driver RSS {data['rss0'] / 2**20:.0f} -> {data['rss1'] / 2**20:.0f} MiB, "
                f"fds {data['fds0']} -> {data['fds1']}, groups left {len(data['groups_left'])}; MLflow {m['child_runs']} "
                f"child runs {m['status']} (Tune {m['tune_status']}), missing {len(m['missing'])}, twice "
                f"{len(m['twice'])}, wrong {len(m['wrong_status'])}; CPU s {json.dumps({k: round(v) for k, v in data['cpu_s'].items()})}",
                flush=True,
            )
        report(results, runs, root)
        results["runs"] = [{k: v for k, v in r.items() if k not in ("samples",)} for r in runs]
    finally:
        stack.close()  # the cluster: every process of it
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()
    print(common.load_summary())
    common.save("sweep_scale", results)


def report(results: dict[str, Any], runs: list[dict[str, Any]], root: Path) -> None:
    ns = [r["n"] for r in runs]
    walls = [r["wall_s"] for r in runs]
    if len(runs) >= 2:
        a, b = fit_line([float(n) for n in ns], walls)
        results["fit"] = {"a_s": a, "b_s": b}
        print(f"\nfit over N = {ns}: wall = {a:.1f} s + {b:.3f} s x N")
    rows = []
    prev = None
    for r in runs:
        n = r["n"]
        marginal = (r["wall_s"] - prev["wall_s"]) / (n - prev["n"]) if prev else float("nan")
        rss_per = (r["rss1"] - r["rss0"]) / n / 1024
        m = r["mlflow"]
        cpu = r["cpu_s"]
        timing = [t["timing"] for t in r["trials"].values() if t["timing"]]
        around = median([t.get("time/trial_s", 0) - t.get("time/job_s", 0) for t in timing])
        rows.append(
            [
                n,
                f"{r['wall_s']:.0f}",
                f"{r['in_run'][1]:.3f}",
                f"{marginal:.3f}" if prev else "-",
                f"{rss_per:.0f}",
                f"{r['fds1'] - r['fds0']:+d}",
                len(r["groups_left"]),
                f"{m['child_runs']}/{m['trials']}",
                "/".join(str(m["status"].get(s, 0)) for s in ("FINISHED", "KILLED", "FAILED")),
                len(m["missing"])
                + len(m["twice"])
                + len(m["wrong_status"])
                + len(m["finished_without_final_metrics"]),
                f"{cpu.get('driver', 0) / n:.3f}",
                f"{cpu.get('ray', 0) / n:.3f}",
                f"{cpu.get('mlflow_server', 0) / n:.3f}",
                f"{cpu.get('postgres', 0) / n:.3f}",
                f"{around:.3f}",
            ]
        )
        prev = r
    results["table"] = common.table(
        [
            "N",
            "wall s",
            "b in run s/trial",
            "b marginal s/trial",
            "driver RSS KB/trial",
            "driver fds after-before",
            "PGs left",
            "MLflow child runs",
            "FINISHED/KILLED/FAILED",
            "lost/twice/wrong",
            "driver CPU s/trial",
            "Ray+actors CPU s/trial",
            "MLflow server CPU s/trial",
            "PostgreSQL CPU s/trial",
            "trial around job s (median)",
        ],
        rows,
    )
    phases = (
        "time/trial_run_s",
        "time/trial_inputs_s",
        "time/trial_streams_s",
        "time/fit_s",
        "time/export_s",
        "time/eval_s",
        "time/log_s",
        "time/job_s",
        "time/trial_s",
    )
    prow = []
    for r in runs:
        timing = [t["timing"] for t in r["trials"].values() if t["status"] == "completed" and t["timing"]]
        prow.append([r["n"], *(f"{median([t.get(p, float('nan')) for t in timing]):.3f}" for p in phases)])
    print("\ninside a completed trial (median seconds, the trial's own time/* report)")
    results["phases"] = common.table(["N", *(p.split("/")[1] for p in phases)], prow)
    for r in runs:
        prof = root / f"pyspy-driver-{r['n']}.txt"
        if prof.is_file():
            print(f"\nthe driver's CPU time at N={r['n']} (py-spy, 20 samples/s, active samples only)")
            results[f"driver_profile_{r['n']}"] = common.table(
                ["where", "share", "seconds", "ms per trial"], profile_breakdown(prof, r["n"])
            )
    samples = [(r["n"], max((s[1] for s in r.get("samples", [])), default=r["rss1"])) for r in runs]
    if len(samples) >= 2:
        a, b = fit_line([float(n) for n, _ in samples], [float(x) for _, x in samples])
        results["peak_rss_fit"] = {"a_bytes": a, "b_bytes_per_trial": b}
        print(f"\ndriver peak RSS during the sweep: {a / 2**20:.0f} MiB + {b / 1024:.1f} KB x N")


if __name__ == "__main__":
    main()
