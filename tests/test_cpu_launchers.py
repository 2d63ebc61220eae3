"""``train.launcher: in_process``: the one worker runs in the calling process (a sweep trial's actor).

The same job under a TorchTrainer and in process gives bit-identical weights and the same reports;
the in-process run keeps its checkpoints in the run folder (the newest two), resumes from the latest
when started again under its name, shows every report to the job's callbacks, and starts again from
its last checkpoint after a failure, up to ``train.max_failures`` times.

The comparison holds in a process that made a DeepSpeed engine before (tests/test_deepspeed.py, in
either order): ``ds_engine.process_state_kept`` puts back the ``torch.nn.functional.linear`` that
ZeRO-3 replaces process-wide.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from pipelines.defaults import default_config
from pipelines.demo import baseline_config
from pipelines.shards import stream_dataset
from pipelines.sweep.resources import (
    default_max_concurrent,
    in_process_trial_resources,
    sizing_resources,
)
from pipelines.train import WorkerSpec, fit
from pipelines.train.in_process import fit_in_process, saved_checkpoints
from tests.pipeline_fixtures import tiny_finetune_spec, write_tiny_train_shards
from unlearn_core.config import (
    ConfigError,
    RunConfig,
    load_run_config,
    resolve_launcher,
    with_launcher_resolved,
    with_overrides,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    return write_tiny_train_shards(tmp_path_factory.mktemp("inproc"))


class Recorder:
    """A Train callback that keeps what it is shown."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: list[str | None] = []

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.reports.append(dict(metrics[0]))
        self.checkpoints.append(checkpoint.path if checkpoint is not None else None)


def _job(shards: Path, workdir: Path, steps: int, launcher: str) -> WorkerSpec:
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(workdir),
            "shards": str(shards),
            "train.steps": steps,
            "train.batch_size": 8,
            "train.num_workers": 1,
            "train.cpus_per_worker": 1.0,
            "train.checkpoint_every": 3,
            "train.lr": 3e-3,
            "train.torch_threads": 1,
            "train.launcher": launcher,
        },
    )
    return tiny_finetune_spec(cfg, shards)


def _weights(result: Any) -> dict[str, torch.Tensor]:
    with result.checkpoint.as_directory() as d:
        return load_file(f"{d}/model.safetensors")


def _step(result: Any) -> int:
    with result.checkpoint.as_directory() as d:
        return int(json.loads(Path(d, "trainer_state.json").read_text())["step"])


def _fit(shards, workdir, steps, launcher, name, storage, *callbacks):
    return fit(
        _job(shards, workdir, steps, launcher),
        {"train": stream_dataset(shards, "train")},
        name=name,
        storage_path=storage,
        callbacks=list(callbacks),
    )


def test_in_process_matches_ray_train_keeps_checkpoints_and_resumes(shards, tmp_path):
    storage = str(tmp_path / "ray")
    under_train = _fit(shards, tmp_path / "a", 6, "ray_train", "ray-train", storage)
    seen = Recorder()
    here = _fit(shards, tmp_path / "b", 6, "in_process", "here", storage, seen)
    a, b = _weights(under_train), _weights(here)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same numbers
    assert here.metrics["loss"] == under_train.metrics["loss"] and here.metrics["step"] == 6

    # Reports at the checkpoint steps reached the callback, each with its persisted checkpoint.
    run_dir = Path(storage) / "here"
    assert [int(r["step"]) for r in seen.reports] == [3, 6]
    assert seen.checkpoints == [str(run_dir / "checkpoint_000000"), str(run_dir / "checkpoint_000001")]
    assert [p.name for p in saved_checkpoints(run_dir)] == ["checkpoint_000000", "checkpoint_000001"]
    assert here.checkpoint.path == str(run_dir / "checkpoint_000001") and _step(here) == 6

    # Started again under the same name with more steps: resumes at step 7, keeps the newest two.
    more = Recorder()
    resumed = _fit(shards, tmp_path / "b", 12, "in_process", "here", storage, more)
    assert [int(r["step"]) for r in more.reports] == [9, 10, 12]  # checkpoints + log_every; 1-6 not re-run
    assert [p.name for p in saved_checkpoints(run_dir)] == ["checkpoint_000002", "checkpoint_000003"]
    assert _step(resumed) == 12
    c = _weights(resumed)
    assert any(not torch.equal(b[k], c[k]) for k in b)


def test_a_failed_attempt_starts_again_from_its_last_checkpoint(tmp_path):
    attempts: list[Path | None] = []

    def worker(config: dict[str, Any], session: Any) -> None:
        from contextlib import ExitStack

        with ExitStack() as stack:
            attempts.append(session.resume_folder(stack))
        if len(attempts) == 1:
            folder = tmp_path / "tmp-ckpt"
            folder.mkdir(exist_ok=True)
            (folder / "state.json").write_text(json.dumps({"step": config["at"]}))
            session.report({"step": 1.0}, folder)
            raise RuntimeError("worker lost")
        session.report({"step": 2.0}, None)

    result = fit_in_process(
        worker, {"at": 1}, {}, name="flaky", storage_path=str(tmp_path / "ray"), callbacks=[], max_failures=1
    )
    assert attempts[0] is None and attempts[1] == tmp_path / "ray" / "flaky" / "checkpoint_000000"
    assert result.metrics == {"step": 2.0} and result.checkpoint.path == str(attempts[1])

    attempts.clear()
    with pytest.raises(RuntimeError, match="worker lost"):  # max_failures 0: the first failure ends it
        fit_in_process(worker, {"at": 1}, {}, name="flaky0", storage_path=str(tmp_path / "ray"), callbacks=[])
    assert len(attempts) == 1


def test_which_trials_run_in_process_and_what_they_hold(monkeypatch, tmp_path):
    monkeypatch.delenv("UNLEARN_TUNE_DRIVER_RESOURCE", raising=False)
    cfg = RunConfig()
    assert cfg.train.launcher == "auto"
    # One rule (resolve_launcher) for every job: one worker without DeepSpeed runs in process.
    assert resolve_launcher(cfg.train) == "in_process"
    assert resolve_launcher(with_overrides(cfg, {"train.num_workers": 2}).train) == "ray_train"
    assert resolve_launcher(with_overrides(cfg, {"train.deepspeed_stage": 2}).train) == "ray_train"
    assert resolve_launcher(with_overrides(cfg, {"train.launcher": "ray_train"}).train) == "ray_train"
    with pytest.raises(ConfigError, match="launcher=in_process"):
        with_overrides(cfg, {"train.launcher": "in_process", "train.num_workers": 2})
    # `make run`'s baselines and vanilla fine-tune follow it; what ran is what MLflow records.
    baseline = baseline_config(str(tmp_path), "ga", 40)
    assert (baseline.train.launcher, baseline.method.name, baseline.train.steps) == ("in_process", "ga", 40)
    vanilla = load_run_config(default_config("finetune"), {"workdir": str(tmp_path)})
    assert with_launcher_resolved(vanilla).train.launcher == "in_process"
    two = with_overrides(vanilla, {"train.num_workers": 2})
    assert with_launcher_resolved(two).train.launcher == "ray_train"

    # A big node: the trial's actor holds its worker's CPU (and GPU); 14 CPUs after Ray Data's 2.
    gpu = with_overrides(cfg, {"train.use_gpu": True})
    big = {"CPU": 16.0, "GPU": 4.0}
    held = in_process_trial_resources(gpu, big)
    assert held == {"CPU": 1.0, "GPU": 1.0}
    assert default_max_concurrent(gpu, 0, sizing_resources(gpu, held), big) == 4  # 4 GPUs
    assert (
        default_max_concurrent(cfg, 0, sizing_resources(cfg, in_process_trial_resources(cfg, big)), big) == 14
    )
    # This 2-CPU machine: no CPU held (Ray Data may need both while the trial waits for a teacher
    # cache or mask), still one trial at a time; a trial slot resource when one is named.
    small = in_process_trial_resources(cfg, {"CPU": 2.0})
    assert small["CPU"] == 0 and small["memory"] > 0
    assert default_max_concurrent(cfg, 0, sizing_resources(cfg, small), {"CPU": 2.0}) == 1
    # An autoscaling cluster at its 0-CPU head, or one 2-CPU node up beside it: the trial asks for its
    # CPU, so it trains on a worker node (a memory-only bundle would fit on the head and train there).
    assert in_process_trial_resources(cfg, {"CPU": 0.0, "memory": 8e9}) == {"CPU": 1.0}
    assert in_process_trial_resources(cfg, {"CPU": 2.0}, cpu_less_node=True) == {"CPU": 1.0}
    # Not a trial driver's slot: this actor trains, where workers go (cluster.yaml's GPU nodes have none).
    monkeypatch.setenv("UNLEARN_TUNE_DRIVER_RESOURCE", "tune_driver")
    assert in_process_trial_resources(gpu, big) == {"CPU": 1.0, "GPU": 1.0}
