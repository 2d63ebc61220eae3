"""The saliency mask and the PUBG teacher go to a GPU when the cluster has one.

This module's Ray advertises one GPU (a logical resource: this machine has no CUDA device), as a
cluster with a GPU node does. The mask's Ray task and the teacher's Ray Data actors must ask for it
(Ray then hands them GPU id 0), and the work, run on this process's CPU since there is no device,
must give the same results as on a cluster without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.shards.build import shard_records
from tests.pipeline_fixtures import save_tiny_model, write_tiny_records
from unlearn_core.config import RunConfig


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs and 1 (logical) GPU: a cluster that has a GPU."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_local) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu_requests")
    shard_records(write_tiny_records(root / "records"), root / "shards", image_size=32)
    return {"shards": root / "shards", "vanilla": save_tiny_model(root / "shards", root / "vanilla")}


def test_a_cluster_gpu_is_wanted_by_a_process_without_one(ray_local):
    import torch

    from pipelines.ray_env import cluster_has_gpu, gpu_elsewhere

    assert not torch.cuda.is_available()
    assert cluster_has_gpu()
    assert gpu_elsewhere(use_gpu=False)  # the cluster's GPU, though the run trains on CPU


@pytest.mark.slow
def test_mask_task_holds_the_cluster_gpu(inputs, tmp_path):
    from pipelines.train.mask import compute_mask, compute_mask_remote

    cfg = RunConfig().model_dump()
    args = (cfg, str(inputs["vanilla"]), str(inputs["shards"]))
    remote = compute_mask_remote(*args, str(tmp_path / "gpu.safetensors"), modules="vision")
    assert remote["ray_gpu_ids"] == ["0"] and remote["device"] == "cpu"
    # The same mask as computed here (no Ray task, no GPU): the placement changes nothing else.
    here = compute_mask(*args, str(tmp_path / "here.safetensors"), modules="vision")
    assert here["ray_gpu_ids"] == [] and here["selected_fraction"] == remote["selected_fraction"]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "gpu.safetensors")), load_file(str(tmp_path / "here.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.slow
def test_teacher_goes_to_ray_data_actors_holding_a_gpu(inputs, tmp_path):
    """A small forget set would be annotated in this process; with a GPU in the cluster and none here,
    it goes to a Ray Data actor that holds the GPU, and the cache is the same table."""
    from pipelines.train import teacher

    on_gpu = teacher.build_teacher_cache(
        inputs["vanilla"], inputs["shards"], tmp_path / "g", log=lambda *_: 0
    )
    meta = json.loads((on_gpu / "teacher.json").read_text())
    assert "1 GPU each" in meta["annotated_in"], meta["annotated_in"]
    assert meta["devices"] == ["cpu (Ray GPU ids: 0)"]
    assert teacher.DEVICE_COLUMN not in pq.read_table(on_gpu / "forget").column_names

    # The same answers as the calling process gives on the same batches (2 blocks, as the actors got).
    import pyarrow as pa

    from unlearn_core.data.selection import in_stream

    rows = pq.read_table(inputs["shards"] / "forget")
    keep = [
        in_stream("forget", s, t)
        for s, t in zip(rows["split"].to_pylist(), rows["task"].to_pylist(), strict=True)
    ]
    rows = rows.filter(pa.array(keep))
    here = teacher._Teacher(str(inputs["vanilla"]), "default", 16, 40)
    parts = [
        here(rows.slice(start, n))
        for start, n in teacher._batch_ranges(rows.num_rows, 2, teacher.TEACHER_BATCH)
    ]
    local = pa.concat_tables(parts).sort_by("sample_id")
    assert set(local[teacher.DEVICE_COLUMN].to_pylist()) == {"cpu (Ray GPU ids: -)"}
    cached = pq.read_table(on_gpu / "forget")
    assert local["teacher_answer"].to_pylist() == cached["teacher_answer"].to_pylist()
