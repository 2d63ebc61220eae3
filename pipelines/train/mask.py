"""`unlearn mask`: a method's Fisher-ratio saliency mask, computed as a Ray task.

The method's ``MaskSpec`` says which rows the forget and preserve Fisher run on (MMUnlearner's
recipe: ``unlearn_core.methods.mmunlearner.preserve_rows``); this module only loads them, batches
them and runs the computation on the model as the workers will train it (same LoRA init).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray


def _rows(shards: Path) -> list[dict[str, Any]]:
    """Every row of the forget and retain shards."""
    rows: list[dict[str, Any]] = []
    for split in ("forget", "retain"):
        folder = shards / split
        if folder.is_dir():
            rows.extend(pq.read_table(folder).to_pylist())
    return rows


def _collated_batches(rows: list[Any], processor: Any, batch_size: int) -> list[dict]:
    from pipelines.shards import rows_with_images
    from unlearn_core.data.encode import collate

    return [
        collate(rows_with_images(rows[i : i + batch_size]), processor)
        for i in range(0, len(rows), batch_size)
    ]


def compute_mask(
    cfg_dict: dict[str, Any],
    model_dir: str,
    shards_dir: str,
    out_path: str,
    *,
    modules: str = "both",
    gamma: float = 1.0,
    batch_size: int = 16,
    max_batches: int = 32,
) -> dict[str, Any]:
    """Load the model as it will be trained (LoRA or full, the same adapter init as the workers),
    compute the mask on the rows the method's ``MaskSpec`` picks, save it, return stats.
    ``cfg_dict`` is the run's config: its method supplies the row recipe (MMUnlearner's when the
    method has no mask of its own, e.g. ``unlearn mask``)."""
    from unlearn_core.config import RunConfig
    from unlearn_core.methods import get_method
    from unlearn_core.methods.mmunlearner import mmunlearner_mask_spec
    from unlearn_core.methods.saliency import compute_saliency_masks, expand_group
    from unlearn_core.models.families import module_groups
    from unlearn_core.models.loading import load_model_and_processor
    from unlearn_core.training.worker import trainable_model

    cfg = RunConfig.model_validate(cfg_dict)
    spec = get_method(cfg.method.name, dict(cfg.method.params)).mask_spec() or mmunlearner_mask_spec(
        modules, gamma
    )
    model, processor = load_model_and_processor(model_dir, cfg.model)
    model = trainable_model(model, cfg)
    rows = _rows(Path(shards_dir))
    budget = batch_size * max_batches
    forget = _collated_batches(spec.forget_rows(rows, budget), processor, batch_size)
    preserve = {
        g: _collated_batches(spec.preserve_rows(rows, g, budget), processor, batch_size)
        for g in expand_group(modules)
    }
    mask = compute_saliency_masks(model, module_groups, forget, preserve, gamma=gamma, groups=[modules])
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    mask.save(out)
    stats = {
        "path": str(out),
        "modules": modules,
        "gamma": gamma,
        "selected_fraction": mask.selected_fraction(),
        "sparsity": mask.sparsity(),
        "recipe": spec.recipe,
        "rows": {
            "forget": sum(len(b["input_ids"]) for b in forget),
            **{f"preserve_{g}": sum(len(b["input_ids"]) for b in v) for g, v in preserve.items()},
        },
        "entities": {
            "forget": len({r["entity_id"] for r in spec.forget_rows(rows, budget)}),
            **{
                f"preserve_{g}": len({r["entity_id"] for r in spec.preserve_rows(rows, g, budget)})
                for g in preserve
            },
        },
    }
    out.with_suffix(".json").write_text(json.dumps(stats, indent=1))
    return stats


def compute_mask_remote(*args: Any, num_cpus: float = 1, **kwargs: Any) -> dict[str, Any]:
    """Run ``compute_mask`` as a Ray task (on a cluster it lands wherever resources are free)."""
    task = ray.remote(num_cpus=num_cpus)(compute_mask)
    return ray.get(task.remote(*args, **kwargs))


# The mask tensor itself is as large as the trainable weights (one byte each): beyond this size the
# run records its path and statistics only.
MASK_ARTIFACT_MAX_BYTES = 256 << 20


def log_mask(tracking_uri: str, run_id: str, mask_path: str | Path) -> dict[str, Any]:
    """Record a saved mask on an MLflow run: its per-group selected share and sparsity as metrics,
    its settings as params, the statistics JSON (and the mask file, when small) as artifacts."""
    import mlflow
    from mlflow.tracking import MlflowClient

    path = Path(mask_path)
    stats_path = path.with_suffix(".json")
    stats = json.loads(stats_path.read_text())
    metrics = {}
    for group, selected in stats["selected_fraction"].items():
        metrics[f"mask.selected_fraction.{group}"] = selected
        metrics[f"mask.sparsity.{group}"] = 1.0 - selected
    client = MlflowClient(tracking_uri)
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()],
        params=[
            mlflow.entities.Param("mask.modules", str(stats["modules"])),
            mlflow.entities.Param("mask.gamma", str(stats["gamma"])),
        ],
    )
    client.set_tag(run_id, "mask_path", str(path))
    client.log_artifact(run_id, str(stats_path), "mask")
    if path.stat().st_size <= MASK_ARTIFACT_MAX_BYTES:
        client.log_artifact(run_id, str(path), "mask")
    return metrics


def mask_job(
    model_dir: str,
    shards_dir: str,
    out_path: str,
    *,
    modules: str,
    gamma: float,
    lora: bool = False,
    tracking_uri: str | None = None,
    workdir: str | Path = "workdir",
) -> dict[str, Any]:
    """`unlearn mask`: compute the mask as a Ray task, save it, and log it as an MLflow run of its own."""
    import mlflow

    from pipelines import tracking
    from unlearn_core.config import RunConfig, TrackingConfig

    cfg = RunConfig(model={"spec": model_dir, "lora": lora})
    stats = compute_mask_remote(
        cfg.model_dump(), model_dir, shards_dir, out_path, modules=modules, gamma=gamma
    )
    uri = tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), workdir)
    exp_id = tracking.ensure_experiment(uri, cfg.tracking.experiment, workdir)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"mask-{modules}") as run:
        mlflow.set_tags(
            {"job": "mask", "model": str(model_dir), "shards": str(shards_dir), "lora": str(lora)}
        )
        log_mask(uri, run.info.run_id, out_path)
    return {**stats, "mlflow_run_id": run.info.run_id}
