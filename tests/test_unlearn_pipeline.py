"""`unlearn run`, `unlearn mask` and `unlearn eval` end to end on a real local Ray and a real SQLite store.

A tiny random LLaVA stands in for the vanilla model (nothing here needs it to know the people): the
PUBG teacher cache is built once by Ray Data and reused, the unlearning run is tracked and registered,
the saliency mask is a Ray task logged to MLflow, and `unlearn eval` writes its JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from pipelines import tracking
from pipelines.shards.build import shard_records
from pipelines.train.unlearn import prepare_inputs, run_unlearn
from pipelines.workspace import Workspace
from tests.pipeline_fixtures import save_tiny_clip, save_tiny_model, write_tiny_records
from unlearn_core.config import RunConfig, with_overrides
from unlearn_core.data.selection import in_stream
from unlearn_core.data.teacher_cache import TOPK_IDS, TOPK_LOGPROBS
from unlearn_core.eval.metrics import METRIC_DEFINITIONS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_local) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unlearn")
    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    vanilla = save_tiny_model(root / "shards", root / "vanilla")
    return {"root": root, "shards": root / "shards", "vanilla": vanilla}


def _forget_prompts(shards: Path) -> int:
    table = pq.read_table(shards / "forget", columns=["split", "task"])
    return sum(
        in_stream("forget", s, t)
        for s, t in zip(table["split"].to_pylist(), table["task"].to_pylist(), strict=True)
    )


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_pubg_run_caches_teacher_once_tracks_and_registers(inputs, tmp_path, mlflow_store):
    uri = mlflow_store["tracking_uri"]
    steps, eval_every = 6, 3
    cfg = with_overrides(
        RunConfig(),
        {
            "workdir": str(tmp_path / "wd"),
            "shards": str(inputs["shards"]),
            "model.spec": str(inputs["vanilla"]),
            "method.name": "pubg",
            "method.params.w_ret": 1.0,
            "train.steps": steps,
            "train.eval_every": eval_every,
            "train.eval_max_samples": 4,
            "train.batch_size": 8,
            "train.torch_threads": 1,
            "tracking.tracking_uri": uri,
            "tracking.registered_model_name": "tiny-pubg",
        },
    )
    lines: list[str] = []
    out = run_unlearn(cfg, log=lines.append)

    # The teacher ran once (in this process: a small forget set), over every forget prompt: every row stays in the forget stream
    # (leaking ones too, marked guide_keep=False for the guidance term) with its top-k log-probs.
    (cache,) = (Path(cfg.workdir) / "teacher").iterdir()
    meta = json.loads((cache / "teacher.json").read_text())
    assert meta["rows"] == _forget_prompts(inputs["shards"])
    annotated = pq.read_table(cache / "forget")
    assert annotated.num_rows == meta["rows"] > 0
    assert annotated["guide_keep"].to_pylist().count(False) == len(meta["guidance_skipped_leaking"])
    assert {TOPK_IDS, TOPK_LOGPROBS} <= set(annotated.column_names)
    first = annotated.slice(0, 1).to_pylist()[0]
    assert len(first[TOPK_IDS]) == len(first[TOPK_LOGPROBS]) > 0
    assert sum("PUBG teacher:" in line for line in lines) == 1
    # Asked again (another run, a sweep trial): the cached answers are used, not recomputed.
    before_mtime = (cache / "forget" / "part-00000.parquet").stat().st_mtime_ns
    again = prepare_inputs(cfg, Workspace(Path(cfg.workdir)), uri, log=lines.append)
    assert again.forget_dir == cache
    assert (cache / "forget" / "part-00000.parquet").stat().st_mtime_ns == before_mtime
    assert sum("PUBG teacher:" in line for line in lines) == 1

    # MLflow: params, live curves (train every report, eval every `eval_every` steps), before/after.
    client = MlflowClient(uri)
    run = client.get_run(out.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["job"] == "unlearn"
    assert run.data.params["method.name"] == "pubg" and float(run.data.params["method.params.w_ret"]) == 1.0
    # every resolved method param is its own MLflow param, defaults included (not "method.params: {}")
    assert (
        run.data.params["method.params.w_bg"] == "1.0"
        and run.data.params["method.params.topk_mode"] == "tail"
    )
    assert "method.params" not in run.data.params
    # every param is the value the run used: the cache's k, the shards read; "None" only where
    # nothing is used (records: the shards were given; mask_path: no mask)
    assert run.data.params["method.params.top_k"] == "16"
    assert run.data.params["shards"] == str(inputs["shards"])
    assert {k for k, v in run.data.params.items() if v == "None"} == {"records", "method.params.mask_path"}
    eval_steps = [int(m.step) for m in client.get_metric_history(run.info.run_id, "eval/forget.leak_rate")]
    assert eval_steps == list(range(eval_every, steps + 1, eval_every))
    assert max(int(m.step) for m in client.get_metric_history(run.info.run_id, "train/loss")) == steps
    for name in ("forget.leak_rate", "retain.vqa_acc", "quality.informativeness"):
        assert name in METRIC_DEFINITIONS
        assert f"before.{name}" in run.data.metrics and f"eval/{name}" in run.data.metrics
        # the final evaluation (the full one, after export) at the last step, once
        assert [int(m.step) for m in client.get_metric_history(run.info.run_id, name)] == [steps]
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert any(a.startswith("eval-pubg-") and a.endswith(".json") for a in arts)
    # Where the job's wall time went (time/*, at the last step): the phases add up, and stepping
    # (the training loop) is part of the fit, the rest of the fit is Ray Train's start-up and teardown.
    t = out.timing
    assert {k: run.data.metrics[k] for k in t} == pytest.approx(t)
    phases = ("stepping_s", "train_startup_s", "eval_s", "export_s", "log_s")
    assert t["time/job_s"] == pytest.approx(sum(t[f"time/{p}"] for p in phases))
    assert 0 < t["time/stepping_s"] <= t["time/fit_s"]
    # The final evaluation was generated in the Train worker after the last step (part of the fit,
    # counted as evaluation, not start-up): its metrics are the last eval/* point and the final ones.
    generating = run.data.metrics["train/final_eval_s"]
    assert 0 < generating <= t["time/eval_s"]
    assert t["time/train_startup_s"] == pytest.approx(t["time/fit_s"] - t["time/stepping_s"] - generating)
    assert min(t.values()) >= 0
    for name in ("forget.leak_rate", "retain.vqa_acc", "quality.informativeness"):
        last = client.get_metric_history(run.info.run_id, f"eval/{name}")[-1]
        assert (last.step, last.value) == (steps, pytest.approx(run.data.metrics[name]))

    # Registered, sha recorded; the unlearned weights are not the vanilla ones.
    version = client.get_model_version("tiny-pubg", out.version)
    assert version.run_id == run.info.run_id
    assert tracking.weights_sha256(out.model_dir) != tracking.weights_sha256(inputs["vanilla"])
    pulled = tracking.pull("models:/tiny-pubg/1", tmp_path / "pulled", tracking_uri=uri)
    assert tracking.weights_sha256(pulled) == tracking.weights_sha256(out.model_dir)


def test_teacher_cache_is_the_same_in_process_and_by_ray_data(inputs, tmp_path, monkeypatch):
    """A small forget set is annotated in the calling process, a large one by a Ray Data actor pool;
    both cut the rows into the same batches, so the cache is the same table either way."""
    from pipelines.train import teacher

    monkeypatch.setattr(teacher, "TEACHER_BATCH", 8)  # 2 blocks of 14 rows: batches of 8 and 6 in each
    here = teacher.build_teacher_cache(
        inputs["vanilla"], inputs["shards"], tmp_path / "here", log=lambda *_: 0
    )
    monkeypatch.setattr(teacher, "IN_PROCESS_MAX_ROWS", 0)
    by_ray = teacher.build_teacher_cache(
        inputs["vanilla"], inputs["shards"], tmp_path / "ray", log=lambda *_: 0
    )
    a, b = pq.read_table(here / "forget"), pq.read_table(by_ray / "forget")
    assert a.num_rows == _forget_prompts(inputs["shards"]) == 28
    assert a.equals(b)
    # A cluster without a GPU: both ran on this machine's CPU, the actor holding no GPU.
    for folder, where in ((here, "this process"), (by_ray, "CPU only")):
        meta = json.loads((folder / "teacher.json").read_text())
        assert where in meta["annotated_in"] and meta["devices"] == ["cpu (Ray GPU ids: -)"]


@pytest.mark.slow
def test_mask_and_eval_commands(inputs, tmp_path, mlflow_store):
    uri = mlflow_store["tracking_uri"]
    mask_path = tmp_path / "mask.safetensors"
    model_and_shards = ["--model", str(inputs["vanilla"]), "--shards", str(inputs["shards"])]
    done = _cli(
        [
            "mask",
            *model_and_shards,
            "--modules",
            "vision",
            "--gamma",
            "1.0",
            "--out",
            str(mask_path),
            "--tracking-uri",
            uri,
            "--workdir",
            str(tmp_path),
        ],
        {},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads(mask_path.with_suffix(".json").read_text())
    masks = load_file(str(mask_path))
    assert masks and all(
        name.startswith(
            ("vision_tower", "multi_modal_projector", "model.vision_tower", "model.multi_modal_projector")
        )
        for name in masks
    ), sorted(masks)[:5]
    selected = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert stats["selected_fraction"]["vision"] == pytest.approx(selected)
    assert 0.0 < selected < 1.0 and stats["sparsity"]["vision"] == pytest.approx(1 - selected)
    assert stats["device"] == "cpu" and stats["ray_gpu_ids"] == []  # no GPU in this cluster
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("lvlm-unlearn").experiment_id], filter_string="tags.job = 'mask'"
    )
    assert run.data.metrics["mask.sparsity.vision"] == pytest.approx(1 - selected)
    assert run.data.params["mask.modules"] == "vision"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "mask")} == {
        "mask/mask.json",
        "mask/mask.safetensors",
    }

    report_path = tmp_path / "eval.json"
    done = _cli(
        [
            "eval",
            *model_and_shards,
            "--out",
            str(report_path),
            "--max-per-group",
            "4",
            "--workdir",  # without it: ./workdir of the checkout (its log went there; conftest now fails that)
            str(tmp_path),
            "--clip-model",
            str(save_tiny_clip(tmp_path / "tiny-clip")),
        ],
        {"MLFLOW_TRACKING_URI": uri},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    metrics = report["metrics"]
    assert {"forget.leak_rate", "forget_unseen.leak_rate", "retain.vqa_acc", "utility.caption_f1"} <= set(
        metrics
    ) and all(0.0 <= v <= 1.0 for k, v in metrics.items() if not k.startswith("quality.clip"))
    # --clip-model: every open answer on the forget images scored against its image
    open_forget = [
        s
        for s in report["per_sample"]
        if s["split"].startswith("forget") and s["task"] in ("identity_vqa", "open_vqa")
    ]
    assert report["counts"]["quality.clipscore"] == len(open_forget) > 0
    assert all(-1.0 <= s["clipscore"] <= 1.0 and 0.0 <= s["clip_s"] <= 2.5 for s in open_forget)
    assert metrics["quality.clipscore"] == pytest.approx(
        sum(s["clipscore"] for s in open_forget) / len(open_forget)
    )
    assert report["per_sample"] and all(
        {"sample_id", "split", "task", "answer", "leaked"} <= set(s) for s in report["per_sample"]
    )
    assert "forget.leak_rate" in done.stdout  # the table on the terminal


@pytest.mark.slow
def test_random_leaves_out_a_forget_row_no_one_else_answers(ray_local, tmp_path):
    """On real benchmarks a forget question may be one no retain person is asked: `random` has no
    other answer for it (no ``rand_`` view). The run leaves the row out of the forget stream and says
    so (row counted and named); every batch the workers get collates; none left is an error."""
    from transformers import AutoProcessor

    from pipelines.train.unlearn import forget_rows_left_out, unlearn_job
    from pipelines.train.worker_data import collate_shard_batch
    from unlearn_core.config import ConfigError
    from unlearn_core.data.records_io import read_records, write_records
    from unlearn_core.methods import get_method

    rows = read_records(write_tiny_records(tmp_path / "synth")).to_pylist()
    victim = next(r for r in rows if in_stream("forget", r["split"], r["task"]) and r["task"] == "fact_vqa")
    victim["question"] = "Which secret does this person keep in the cellar?"
    write_records(rows, tmp_path / "records", source="synthetic")
    shards = tmp_path / "shards"
    shard_records(tmp_path / "records", shards, image_size=32)
    save_tiny_model(shards, tmp_path / "wd" / "models" / "vanilla")
    cfg = with_overrides(
        RunConfig(), {"workdir": str(tmp_path / "wd"), "shards": str(shards), "method.name": "random"}
    )
    said: list[str] = []
    prepared = prepare_inputs(cfg, Workspace(tmp_path / "wd"), "sqlite:///unused.db", log=said.append)
    total = _forget_prompts(shards)
    assert prepared.forget_left_out == (victim["sample_id"],)
    line = next(s for s in said if "left out of the forget stream" in s)
    assert f"1 of {total} forget rows" in line and victim["sample_id"] in line
    assert "no other person answers the same question" in line

    job = unlearn_job(
        cfg,
        prepared,
        out_dir=tmp_path / "out",
        eval_path=tmp_path / "e.json",
        name="t",
        storage_path=str(tmp_path),
    )
    processor = AutoProcessor.from_pretrained(shards / "processor")
    seen = []
    for batch in job.datasets["forget"].iter_batches(batch_size=4, batch_format="numpy"):
        collated = collate_shard_batch(batch, processor, ("rand_",))
        assert collated["rand_input_ids"].shape[0] == len(batch["sample_id"])
        seen += list(batch["sample_id"])
    assert len(seen) == total - 1 and victim["sample_id"] not in seen

    # No forget row with the view: refused, naming the view and the rows.
    empty = shards / "only_unmatched"
    (empty / "forget").mkdir(parents=True)
    forget = pq.read_table(shards / "forget")
    mine = [i for i, sid in enumerate(forget["sample_id"].to_pylist()) if sid == victim["sample_id"]]
    pq.write_table(forget.take(mine), empty / "forget" / "part-00000.parquet")
    with pytest.raises(
        ConfigError, match=r"none of the 1 forget rows has its 'rand_' view.*" + victim["sample_id"]
    ):
        forget_rows_left_out(get_method("random"), empty, None, said.append)
