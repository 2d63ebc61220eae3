"""Connect to Ray: the cluster in RAY_ADDRESS (or `ray job submit`'s), else a local one."""

from __future__ import annotations

import os

import ray
import ray.data

from pipelines import console

# ray.train.report() waits until the Train controller polls the workers (every 2 s by default): with
# reports every 10 short steps that wait was up to 30% of a tiny model's training time
# (bench/train_step.py). A local Ray inherits these; cluster.yaml exports them on every node.
ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}


def apply_env_defaults() -> None:
    """Set ``ENV_DEFAULTS`` where the environment does not already choose (before ``ray.init``)."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start or join Ray once per process; quiet logs, local by default."""
    if ray.is_initialized():
        return
    apply_env_defaults()
    term = console.active()
    if term is not None and term.log_path is not None:
        # The console shows its own displays for sharding and evaluation; Ray Data's bars would only
        # fill the log file with a block every few seconds.
        ray.data.DataContext.get_current().enable_progress_bars = False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
    else:
        # The dashboard also serves the State API, which Ray Train's placement-group cleaner polls.
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)


def autoscaler_max_resources() -> dict[str, float] | None:
    """The autoscaler's maximum cluster resources, where Ray publishes them (autoscaler v2, e.g. KubeRay;
    the v1 autoscaler of ``ray up`` does not): None when unknown."""
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: absent or changed in this Ray version
        return None
    return {k: float(v) for k, v in found.items()} if found else None


def cluster_has_gpu() -> bool:
    """Whether the connected cluster has a GPU now or its autoscaler can add one (where Ray says so)."""
    if ray.cluster_resources().get("GPU", 0) >= 1:
        return True
    most = autoscaler_max_resources() or {}
    return 1 <= most.get("GPU", 0) < 2**62  # Ray reports an unbounded node group as sys.maxsize


def gpu_elsewhere(use_gpu: bool) -> bool:
    """Whether model work (a saliency mask, the PUBG teacher) belongs on a cluster GPU rather than in
    this process: this process sees no CUDA device, and the run trains on GPUs (``use_gpu``) or the
    connected cluster has or can add a GPU."""
    import torch

    if torch.cuda.is_available():
        return False
    return use_gpu or (ray.is_initialized() and cluster_has_gpu())
