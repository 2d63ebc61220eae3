"""Ray Train + MLflow end to end at small scale: 2-worker DDP fine-tune, registry round trip, resume."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from pipelines import tracking
from pipelines.evaluate import evaluate, evaluate_cached, evaluation_rows
from pipelines.evaluate.cached import cache_path
from pipelines.shards import stream_dataset
from pipelines.train import fit
from pipelines.train.finetune import run_finetune
from tests.pipeline_fixtures import tiny_finetune_spec, write_tiny_train_shards
from unlearn_core.config import RunConfig, with_overrides
from unlearn_core.eval.runner import EVAL_CHUNK
from unlearn_core.models.loading import load_model_and_processor


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    return write_tiny_train_shards(tmp_path_factory.mktemp("train"))


def _cfg(workdir, shards, **extra) -> RunConfig:
    base = {
        "workdir": str(workdir),
        "shards": str(shards),
        "train.steps": 6,
        "train.batch_size": 8,
        "train.num_workers": 2,
        "train.cpus_per_worker": 0.5,
        "train.checkpoint_every": 3,
        "train.eval_max_samples": 2,
        "train.lr": 3e-3,
        "tracking.registered_model_name": "tiny-vanilla",
    }
    return with_overrides(RunConfig(), {**base, **extra})


def test_ddp_finetune_logs_registers_and_pulls(shards, tmp_path, mlflow_store):
    # 4 rows per group: more than one EVAL_CHUNK, so both ranks generate part of the final evaluation.
    cfg = _cfg(tmp_path / "wd", shards, **{"train.eval_max_samples": 4})
    out = run_finetune(cfg, log=lambda *_: None)
    # The workers' final evaluation (each rank its chunks, gathered on rank 0) is the evaluation of the
    # exported model that `unlearn eval` (Ray Data actors) gives: every row, the same generations.
    rows, _ = evaluation_rows(shards, 4)
    assert len(rows) > EVAL_CHUNK
    again = evaluate(out.model_dir, shards, max_per_group=4)
    assert [r["sample_id"] for r in out.report["per_sample"]] == [r["sample_id"] for r in rows]
    assert out.report["per_sample"] == again["per_sample"]
    assert out.report["metrics"] == again["metrics"] and out.report["n_rows"] == len(rows)
    # ... so it is kept as the model's cached evaluation: runs starting from it do not evaluate it again.
    kept = cache_path(out.model_dir, shards, tmp_path / "wd" / "results", 4)
    assert json.loads(kept.read_text()) == out.report
    written = kept.stat().st_mtime_ns
    assert evaluate_cached(out.model_dir, shards, tmp_path / "wd" / "results", 4) == out.report
    assert kept.stat().st_mtime_ns == written  # read back, not evaluated and written again
    client = MlflowClient(mlflow_store["tracking_uri"])
    run = client.get_run(out.run_id)
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.params["train.lr"] == "0.003"
    losses = client.get_metric_history(out.run_id, "train/loss")
    assert [int(m.step) for m in losses] == [3, 6]  # each report logged exactly once
    assert "forget.leak_rate" in run.data.metrics and "retain.vqa_acc" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(out.run_id)}
    assert {"shards_manifest.json", "eval-vanilla.json"} <= arts

    # Register + pull round trip, sha256 checked; the pulled folder loads and gives the same logits.
    assert out.version == "1"
    pulled = tracking.pull(
        "models:/tiny-vanilla/1", tmp_path / "pulled", tracking_uri=mlflow_store["tracking_uri"]
    )
    assert json.loads((pulled / "PULLED_FROM.json").read_text())["weights_sha256"] == out.weights_sha256
    tracking.set_alias("tiny-vanilla", "champion", "1", tracking_uri=mlflow_store["tracking_uri"])
    by_alias = tracking.pull(
        "models:/tiny-vanilla@champion", tmp_path / "p2", tracking_uri=mlflow_store["tracking_uri"]
    )
    assert tracking.weights_sha256(by_alias) == out.weights_sha256
    a = load_file(str(next((tmp_path / "wd" / "models" / "vanilla").glob("*.safetensors"))))
    b = load_file(str(next(pulled.glob("*.safetensors"))))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, _ = load_model_and_processor(str(pulled), cfg.model)
    assert sum(p.numel() for p in model.parameters()) > 0

    # The registered pyfunc answers (image, question) rows.
    import mlflow.pyfunc
    import pandas as pd

    from unlearn_core.data.records_io import read_records

    row = next(r for r in read_records(shards.parent / "records").to_pylist() if r["task"] == "identity_vqa")
    pyfunc = mlflow.pyfunc.load_model("models:/tiny-vanilla@champion")
    answers = pyfunc.predict(
        pd.DataFrame(
            [
                {"question": row["question"], "image": row["image"]},
                {"question": "Describe the image.", "image": row["image"]},
            ]
        )
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    # A tampered download is refused.
    # The embedded store keeps artifacts in mlartifacts/ beside the SQLite file.
    weights = next((mlflow_store["artifacts"].parent / "mlartifacts" / "models").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256"):
        tracking.pull("models:/tiny-vanilla/1", tmp_path / "p3", tracking_uri=mlflow_store["tracking_uri"])


def test_resume_continues_from_saved_step(shards, tmp_path):
    cfg = _cfg(
        tmp_path / "wd",
        shards,
        **{"train.num_workers": 1, "train.cpus_per_worker": 1.0, "train.launcher": "ray_train"},
    )
    job = tiny_finetune_spec(cfg, shards)
    first = fit(
        job, {"train": stream_dataset(shards, "train")}, name="first", storage_path=str(tmp_path / "ray")
    )
    ckpts = sorted(first.best_checkpoints, key=lambda c: c[1]["step"])
    assert [int(m["step"]) for _, m in ckpts] == [3, 6]
    step3 = ckpts[0][0]
    with step3.as_directory() as d:
        assert json.loads(open(f"{d}/trainer_state.json").read())["step"] == 3
        w3 = load_file(f"{d}/model.safetensors")

    job.resume_from = step3.path
    resumed = fit(
        job, {"train": stream_dataset(shards, "train")}, name="resumed", storage_path=str(tmp_path / "ray")
    )
    steps = [int(m["step"]) for _, m in resumed.best_checkpoints]
    assert steps == [6]  # continued at step 4, did not redo steps 1-3
    with resumed.checkpoint.as_directory() as d:
        state = json.loads(open(f"{d}/trainer_state.json").read())
        w6 = load_file(f"{d}/model.safetensors")
    assert state["step"] == 6
    assert any(not torch.equal(w3[k], w6[k]) for k in w3)


def test_same_seed_same_weights_other_seed_other_weights(shards, tmp_path):
    """Seeded and reproducible on CPU: the same config twice gives bit-identical weights (model init,
    Ray Data order, the split between 2 DDP workers, the seeded shuffle of every epoch and the epoch
    cache that serves epochs after the first); another seed gives other weights. The run crosses
    epoch boundaries: 9 steps of 2 x 16 rows read 288 rows of a 218-row stream."""
    steps, batch, workers = 9, 16, 2
    stream = stream_dataset(shards, "train")
    rows = stream.count()
    assert steps * batch * workers > rows, "the run must cross an epoch boundary"

    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        cfg = _cfg(
            tmp_path / name,
            shards,
            **{
                "train.steps": steps,
                "train.batch_size": batch,
                "train.num_workers": workers,
                "train.cpus_per_worker": 0.5,
                "train.checkpoint_every": 0,
                "train.seed": seed,
                "train.torch_threads": 1,
            },
        )
        job = tiny_finetune_spec(cfg, shards)
        result = fit(
            job, {"train": stream_dataset(shards, "train")}, name=name, storage_path=str(tmp_path / "ray")
        )
        with result.checkpoint.as_directory() as d:
            return load_file(f"{d}/model.safetensors")

    a, b, other = weights(0, "seed0-a"), weights(0, "seed0-b"), weights(1, "seed1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], other[k]) for k in a)
