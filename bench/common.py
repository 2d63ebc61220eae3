"""Shared helpers of the bench scripts: inputs, load reporting, statistics, tables, Ray, py-spy.

Inputs: a finished workdir (vanilla model, shards with ``processor/``, PUBG teacher cache) is read
from ``$BENCH_SRC`` (default ``/tmp/wd2``, read-only). When it is missing, a small stand-in is
built once under ``$BENCH_DIR`` (default ``/tmp/bench``): the synthetic benchmark, its shards, an
*untrained* tiny LLaVA (speed does not depend on the weights) and its teacher cache. Everything
a bench writes goes under ``$BENCH_DIR``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/tmp/bench"))
BENCH_SRC = Path(os.environ.get("BENCH_SRC", "/tmp/wd2"))
RESULTS_DIR = BENCH_DIR / "results"
QUICK = os.environ.get("BENCH_QUICK", "0") not in ("", "0")

LOADS: list[tuple[str, tuple[float, float, float]]] = []


# -- machine and load ---------------------------------------------------------------------------
def load(label: str = "") -> tuple[float, float, float]:
    """Print (and remember) ``os.getloadavg()`` before a measurement."""
    la = os.getloadavg()
    LOADS.append((label, la))
    print(
        f"[load] {label or 'measurement'}: os.getloadavg() = ({la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f})",
        flush=True,
    )
    return la


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": "none (no GPU in this session)"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
    }


def load_summary() -> str:
    if not LOADS:
        return "no load samples"
    ones = [la[0] for _, la in LOADS]
    return f"1-min load average over {len(ones)} samples: median {statistics.median(ones):.1f}, min {min(ones):.1f}, max {max(ones):.1f}"


def header(title: str) -> dict[str, Any]:
    m = machine()
    print(f"== {title} ==")
    print(f"machine: {m['cores']} cores, {m['cpu']}, torch {m['torch']}, GPU: {m['gpu']}; {m['date']}")
    return m


# -- statistics and tables ----------------------------------------------------------------------
@dataclass
class Stats:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def q1(self) -> float:
        return _quantile(self.values, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.values, 0.75)

    def fmt(self, digits: int = 3) -> str:
        v = self.values
        return (
            f"{self.median:.{digits}g} (IQR {self.q1:.{digits}g}-{self.q3:.{digits}g}, "
            f"min {min(v):.{digits}g}, max {max(v):.{digits}g}, n={len(v)})"
        )

    def short(self, digits: int = 3) -> str:
        return f"{self.median:.{digits}g} [{min(self.values):.{digits}g}, {max(self.values):.{digits}g}]"

    def as_dict(self) -> dict[str, Any]:
        v = self.values
        return {
            "median": self.median,
            "q1": self.q1,
            "q3": self.q3,
            "min": min(v),
            "max": max(v),
            "values": v,
        }


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (printed and returned)."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = {**data, "loads": [{"label": lbl, "loadavg": la} for lbl, la in LOADS]}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"results written to {path}")
    return path


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- inputs -------------------------------------------------------------------------------------
@dataclass
class Inputs:
    records: Path
    shards: Path
    vanilla: Path
    teacher: Path  # folder holding forget/ with the PUBG teacher columns

    @property
    def image_size(self) -> int:
        return int(json.loads((self.shards / "manifest.json").read_text())["config"]["image_size"])


def _teacher_dir(root: Path) -> Path | None:
    found = sorted(p.parent for p in root.glob("*/teacher.json")) if root.is_dir() else []
    return found[0] if found else None


def inputs() -> Inputs:
    src = BENCH_SRC
    teacher = _teacher_dir(src / "teacher")
    if (src / "models/vanilla/config.json").exists() and (src / "shards/manifest.json").exists() and teacher:
        return Inputs(src / "records", src / "shards", src / "models/vanilla", teacher)
    return _build_inputs(BENCH_DIR / "inputs")


def _build_inputs(root: Path) -> Inputs:
    """A stand-in workdir: synthetic records, shards, an untrained tiny LLaVA and its teacher cache."""
    from transformers import AutoProcessor

    from pipelines.shards.build import shard_records
    from pipelines.train.teacher import build_teacher_cache
    from unlearn_core.config import SynthConfig
    from unlearn_core.data.records_io import write_records
    from unlearn_core.data.synth import generate_benchmark
    from unlearn_core.models.loading import save_model
    from unlearn_core.models.tiny import build_tiny_llava

    print(f"{BENCH_SRC} has no finished workdir: building a stand-in under {root}", flush=True)
    start_local_ray()
    records, shards, vanilla = root / "records", root / "shards", root / "models/vanilla"
    if not (records / "records_meta.json").exists():
        write_records(generate_benchmark(SynthConfig()), records, source="synthetic")
    shard_records(records, shards, image_size=64)
    if not (vanilla / "config.json").exists():
        processor = AutoProcessor.from_pretrained(shards / "processor")
        model, _ = build_tiny_llava(processor.tokenizer, image_size=64, seed=0)
        save_model(model, processor, vanilla)
    teacher = build_teacher_cache(vanilla, shards, root / "teacher", log=lambda *_: None)
    return Inputs(records, shards, vanilla, teacher)


# -- training steps -----------------------------------------------------------------------------
# The two kinds of step the step benches compare: mode -> (job mode, training stream, method).
STEP_MODES = {"sft": ("finetune", "train", None), "ga": ("unlearn", "forget", "ga")}


def step_config(inp: Inputs, mode: str, steps: int, *, batch: int, threads: int, **extra: Any) -> Any:
    """The config of a one-worker bench job of ``mode`` on the inputs' shards, under a TorchTrainer
    (``train.launcher: ray_train``: "ours Ray Train" is the pipeline's Ray Train path)."""
    from unlearn_core.config import RunConfig, with_overrides

    return with_overrides(
        RunConfig(),
        {
            "workdir": str(BENCH_DIR / "wd"),
            "shards": str(inp.shards),
            "train.steps": steps,
            "train.batch_size": batch,
            "train.torch_threads": threads,
            "train.num_workers": 1,
            "train.cpus_per_worker": 1,
            "train.launcher": "ray_train",
            "method.name": STEP_MODES[mode][2] or "ga",
            "method.params": {},
            **extra,
        },
    )


def next_token_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The bare loops' loss: cross-entropy of every next token against the labels (answer tokens)."""
    import torch.nn.functional as F

    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        use_cache=False,
    ).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )


def report_log(name: str) -> Path:
    """Where ``fit_logged`` keeps the rank-0 reports of the bench run ``name``."""
    return BENCH_DIR / "reports" / f"{name}.jsonl"


def fit_logged(inp: Inputs, cfg: Any, job_mode: str, datasets: dict[str, Any], name: str) -> float:
    """``pipelines.train.fit`` as the pipeline calls it, from the inputs' vanilla model, its reports
    appended to ``report_log(name)``; returns the fit's wall seconds."""
    from pipelines.train import WorkerSpec, fit

    spec = WorkerSpec(
        cfg=cfg.model_dump(),
        mode=job_mode,
        processor_dir=str(inp.vanilla),
        init_model=str(inp.vanilla),
        image_size=inp.image_size,
    )
    t0 = time.perf_counter()
    fit(
        spec,
        datasets,
        name=f"bench-{name}-{int(time.time())}",
        storage_path=str(BENCH_DIR / "ray_results"),
        callbacks=[report_log_callback(report_log(name))],
    )
    return time.perf_counter() - t0


# -- sweep trials -------------------------------------------------------------------------------
def trial_timings(trials: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each completed trial's ``time/*`` (``run_sweep``'s ``TrialOutcome``s) plus ``time/trial_setup_s``:
    its actor's start-up and imports (the process's age when the trial started) if it was the first
    trial of its actor (process id), else 0 (a reused actor has its stack imported already)."""
    first: dict[int, tuple[float, str]] = {}
    for name, t in trials.items():
        age = t.timing.get("time/process_age_s")
        if age is not None and t.pid is not None and age < first.get(t.pid, (float("inf"), ""))[0]:
            first[t.pid] = (age, name)
    firsts = {name for _, name in first.values()}
    return {
        name: {**t.timing, "time/trial_setup_s": t.timing["time/process_age_s"] if name in firsts else 0.0}
        for name, t in trials.items()
        if t.status == "completed" and t.timing
    }


def trial_wall(timing: dict[str, float]) -> float:
    """A trial's wall time (``trial_timings``): its function, plus its actor's set-up when it was the
    actor's first trial."""
    return timing["time/trial_s"] + timing.get("time/trial_setup_s", 0.0)


# -- Ray ----------------------------------------------------------------------------------------
def start_local_ray(num_cpus: int = 2) -> None:
    """A fresh local Ray (never another job's cluster) with ``num_cpus`` CPUs."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    import logging

    from pipelines.ray_env import apply_env_defaults

    apply_env_defaults()  # the pipeline's Ray settings (Train controller poll interval), so "ours" = the pipeline
    # With the dashboard, as the pipeline starts Ray: it serves the State API that Ray Train's
    # placement-group cleaner polls. Without it the worker placement group of a trial that ASHA
    # stopped stays reserved, and on 2 CPUs the next trial's evaluation waits for a CPU forever.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        logging_level="ERROR",
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Let Ray's controller unpickle the callbacks defined here (bench/ is not an installed package).
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def report_log_callback(path: Path):
    """A Ray Train controller callback appending each rank-0 report (plus arrival time) to ``path``."""
    from ray.train import UserCallback

    class ReportLog(UserCallback):
        def __init__(self, out: str) -> None:
            self.out = out

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics:
                with open(self.out, "a") as f:
                    f.write(json.dumps({"t": time.time(), **metrics[0]}) + "\n")

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return ReportLog(str(path))


def read_reports(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def steady_rate(reports: list[dict[str, Any]], skip_first: int = 1) -> tuple[float, int, int]:
    """Steps/s between the ``skip_first``-th report and the last one, from the worker's own clock.

    ``steps_per_s`` in a report is ``done / (now - t_loop_start)``, so ``done / steps_per_s`` is the
    worker time at that report; the difference between two reports excludes start-up and the
    first (warm-up) window. Returns (steps/s, first step, last step).
    """
    reps = [r for r in reports if "steps_per_s" in r]
    a, b = reps[skip_first - 1], reps[-1]
    ta, tb = a["step"] / a["steps_per_s"], b["step"] / b["steps_per_s"]
    return (b["step"] - a["step"]) / (tb - ta), int(a["step"]), int(b["step"])


def ray_descendants(marker: str) -> list[int]:
    """PIDs of this driver's descendant processes whose command line contains ``marker``."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if marker in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


# -- py-spy -------------------------------------------------------------------------------------
def pyspy_bin() -> str:
    cand = Path(sys.executable).parent / "py-spy"
    return str(cand) if cand.exists() else "py-spy"


def pyspy_record(pid: int, seconds: float, out: Path, *, rate: int = 50) -> subprocess.Popen:
    """Start ``py-spy record`` (raw collapsed stacks, all threads, idle frames kept) on ``pid``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        pyspy_bin(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--idle",
        "--threads",
        "--nonblocking",
        "-o",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, _, count = line.rpartition(" ")
        stacks.append((frames.split(";"), int(count)))
    return stacks
