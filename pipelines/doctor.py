"""`unlearn doctor`: what this machine would run with, without starting or writing anything.

Library versions come from the installed package metadata; devices from torch; the Ray cluster from
``RAY_ADDRESS`` or a cluster started on this machine with ``ray start``; the tracking URI as a job
would resolve it, and whether it can be used (a server that answers; a store that is not a copy
pointing into another workdir).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

LIBRARIES = ("lvlm-unlearn", "torch", "ray", "mlflow", "transformers", "peft", "deepspeed")


def version() -> str:
    """The installed ``lvlm-unlearn`` version."""
    try:
        return metadata.version("lvlm-unlearn")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def devices() -> list[str]:
    """``cpu: N cores`` plus every accelerator torch sees."""
    import torch

    found = [f"cpu: {os.cpu_count()} cores (torch threads {torch.get_num_threads()})"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        found.append(
            "cuda: none visible"
            + (
                f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r})"
                if "CUDA_VISIBLE_DEVICES" in os.environ
                else ""
            )
        )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps: available")
    return found


def ray_cluster() -> str:
    """The cluster `unlearn` commands would join (the same rule as ``ray.init()``)."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        from pipelines.preflight import ray_address
        from unlearn_core.config import ConfigError

        try:
            ray_address(timeout_s=2.0)
        except ConfigError as err:
            return f"{address} (from RAY_ADDRESS) - UNREACHABLE: {err}"
        return f"{address} (from RAY_ADDRESS)"
    # `ray start --head` records its address here; ray.init() joins that cluster when it is running.
    tmp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    if tmp.is_file() and tmp.read_text().strip():
        return f"{tmp.read_text().strip()} (a cluster started on this machine with `ray start`; recorded in {tmp})"
    return f"none running: a new local Ray with {os.cpu_count()} CPUs (set RAY_ADDRESS to join a cluster)"


def tracking_uri(workdir: str | Path) -> str:
    """Like ``tracking.resolve_tracking_uri`` with the default config, without creating the workdir;
    then whether a server answers (``services.check_tracking``, a few seconds at most) or the
    workdir's store points into another folder (a copied workdir)."""
    from pipelines.services import check_tracking
    from pipelines.services import tracking_uri as resolve
    from unlearn_core.config import ConfigError

    uri = resolve(None, workdir)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        line = f"{uri} (from MLFLOW_TRACKING_URI)"
    else:
        line = f"{uri} (the workdir's embedded store)"
    try:
        check_tracking(uri, "tracking URI")
    except ConfigError as err:
        return f"{line} - UNUSABLE: {str(err).split(': ', 1)[-1]}"
    return line + (" - answers" if uri.startswith(("http://", "https://")) else "")


def report(workdir: str | Path = "workdir") -> str:
    lines = [
        f"lvlm-unlearn {version()}",
        f"python {platform.python_version()} ({sys.executable})",
        "libraries:",
    ]
    lines += [f"  {name:<14} {v}" for name, v in library_versions().items() if name != "lvlm-unlearn"]
    lines.append("devices:")
    lines += [f"  {d}" for d in devices()]
    lines.append(f"ray cluster:  {ray_cluster()}")
    lines.append(f"tracking URI: {tracking_uri(workdir)}")
    return "\n".join(lines)
