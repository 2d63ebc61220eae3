"""What one trial holds (its driver function + workers) and how many trials the cluster fits at once."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from unlearn_core.config import RunConfig

DRIVER_RESOURCE_ENV = "UNLEARN_TUNE_DRIVER_RESOURCE"  # e.g. "tune_driver" on cluster.yaml clusters
DRIVER_CPUS_ENV = "UNLEARN_TUNE_DRIVER_CPUS"  # CPUs reserved per trial driver function (default 1)
# CPUs kept free for Ray Data: evaluate() runs a 1-CPU repartition task next to a 1-CPU actor pool.
DATA_CPUS = 2.0
DRIVER_MEMORY = float(64 * 2**20)  # bytes, the driver's bundle when it holds no CPU


def driver_resources(
    cfg: RunConfig, workers_per_trial: int, cluster: Mapping[str, float]
) -> dict[str, float]:
    """What one trial's driver function holds.

    CPUs: ``UNLEARN_TUNE_DRIVER_CPUS`` if set; else 1, or 0 (plus a token amount of memory, as Tune needs
    a non-empty bundle) on a cluster too small to keep 1 CPU for the driver next to a trial's workers and
    the ``DATA_CPUS`` an evaluation needs (the driver function mostly waits). Plus one unit of the
    custom resource named in ``UNLEARN_TUNE_DRIVER_RESOURCE`` (e.g. ``tune_driver``), if set.
    """
    if os.environ.get(DRIVER_CPUS_ENV):
        cpus = float(os.environ[DRIVER_CPUS_ENV])
    else:
        spare = cluster.get("CPU", 0.0) - DATA_CPUS - workers_per_trial * cfg.train.cpus_per_worker
        cpus = 1.0 if spare >= 1.0 else 0.0
    res = _cpu_bundle(cpus)
    if custom := os.environ.get(DRIVER_RESOURCE_ENV):
        res[custom] = 1.0
    return res


def _cpu_bundle(cpus: float) -> dict[str, float]:
    """``cpus`` CPUs; with none, a token amount of memory instead (Tune needs a non-empty bundle)."""
    return {"CPU": cpus} if cpus else {"CPU": 0.0, "memory": DRIVER_MEMORY}


def in_process_trial_resources(
    cfg: RunConfig, cluster: Mapping[str, float], *, cpu_less_node: bool = False
) -> dict[str, float]:
    """What an in-process trial's actor holds: its one worker's CPUs (and GPU). Not the
    ``UNLEARN_TUNE_DRIVER_RESOURCE`` of trial drivers: this actor trains, so it goes where workers go
    (``cluster.yaml``'s GPU nodes have no ``tune_driver``).

    On a machine too small to keep ``DATA_CPUS`` free next to the worker's CPUs (but big enough for
    the worker) it holds no CPU (a token of memory instead): a trial that must first compute a teacher
    cache or saliency mask waits for Ray Data tasks and actors, which would otherwise wait for the CPU
    the trial holds. The trial trains only after they are done, so its core is never used twice;
    concurrency is still sized with the worker's CPUs (``sizing_resources``). A cluster with a node
    that has no CPU (``cpu_less_node``: an autoscaling cluster's 0-CPU head), or that cannot hold the
    worker at all, gets the request for the CPUs (which brings a node): a token bundle would fit on
    that head and train there.
    """
    cpus = float(cfg.train.cpus_per_worker)
    total = cluster.get("CPU", 0.0)
    small_machine = cpus <= total < cpus + DATA_CPUS and not cpu_less_node
    res = _cpu_bundle(0.0 if small_machine else cpus)
    if cfg.train.use_gpu:
        res["GPU"] = 1.0
    return res


def sizing_resources(cfg: RunConfig, held: Mapping[str, float]) -> dict[str, float]:
    """An in-process trial's resources as concurrency counts them: the CPUs it trains on, held or not."""
    out = {k: v for k, v in held.items() if k != "memory"}
    out["CPU"] = float(cfg.train.cpus_per_worker)
    return out


def _trials_that_fit(
    cfg: RunConfig, workers_per_trial: int, driver: Mapping[str, float], cluster: Mapping[str, float]
) -> int:
    per_cpu = driver["CPU"] + workers_per_trial * cfg.train.cpus_per_worker
    fits = [math.floor((cluster.get("CPU", 0) - DATA_CPUS) / per_cpu + 1e-9)]
    if cfg.train.use_gpu and workers_per_trial:
        fits.append(math.floor(cluster.get("GPU", 0) / workers_per_trial + 1e-9))
    fits += [
        math.floor(cluster.get(k, 0) / v + 1e-9) for k, v in driver.items() if k not in ("CPU", "memory")
    ]
    return min(fits)


def default_max_concurrent(
    cfg: RunConfig, workers_per_trial: int, driver: Mapping[str, float], cluster: Mapping[str, float]
) -> int:
    """Trials that fit at once: cluster CPUs (less ``DATA_CPUS`` kept for Ray Data), GPUs and driver slots
    over one trial's needs (its driver + ``workers_per_trial`` workers; an in-process trial passes its
    own resources as ``driver`` and 0 workers); at least 1."""
    return max(1, _trials_that_fit(cfg, workers_per_trial, driver, cluster))


def cluster_capacity(
    now: Mapping[str, float], autoscaler_max: Mapping[str, float] | None
) -> dict[str, float]:
    """What the cluster can hold: its resources ``now``, raised to the autoscaler's maximum where it
    reports a finite one (an autoscaling cluster may start with a 0-CPU head and no workers)."""
    out = {k: float(v) for k, v in now.items()}
    for k, v in (autoscaler_max or {}).items():
        if 0 < v < 2**62:  # Ray reports an unbounded node group as sys.maxsize
            out[k] = max(out.get(k, 0.0), float(v))
    return out


def capacity_note(
    cfg: RunConfig,
    workers_per_trial: int,
    driver: Mapping[str, float],
    cluster: Mapping[str, float],
    autoscaler_known: bool,
) -> str | None:
    """A line for the log when the cluster, as far as the sweep can see, cannot hold even one trial
    (typical of an autoscaling cluster still at its 0-CPU head): the sweep then runs 1 trial at a time."""
    need = {k: v for k, v in driver.items() if k != "memory"}
    need["CPU"] = need.get("CPU", 0.0) + workers_per_trial * cfg.train.cpus_per_worker
    if cfg.train.use_gpu and workers_per_trial:
        need["GPU"] = float(workers_per_trial)
    short = {k: v for k, v in need.items() if cluster.get(k, 0.0) + 1e-9 < v}
    if not short:
        return None
    have = ", ".join(f"{k} {cluster.get(k, 0.0):g}" for k in sorted(short))
    where = "the autoscaler's maximum" if autoscaler_known else "the cluster now"
    return (
        f"{where} has {have}, less than one trial needs ({', '.join(f'{k} {v:g}' for k, v in sorted(need.items()))}"
        f"): running 1 trial at a time; an autoscaling cluster adds nodes while trials wait "
        "(pass --max-concurrent K to run more at once)"
    )


def has_cpu_less_node() -> bool:
    """Whether a live node of the connected Ray cluster has no CPU (a head kept free of work)."""
    import ray

    return any(n.get("Alive") and not n.get("Resources", {}).get("CPU") for n in ray.nodes())
