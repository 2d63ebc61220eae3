"""Stage 2, training: the Ray Train (V2) trainer, its prepared inputs (teacher cache, saliency mask) and
the one training-job driver that `finetune`, `run` and every sweep trial go through.

Names load on first use (PEP 562): the Ray Train controller imports ``pipelines.train.progress`` to
unpickle its callback, and must not pay for torch and transformers through this package.
"""

from __future__ import annotations

from pipelines.lazy import lazy_getattr

_HOMES = {
    "sweep_callbacks": "pipelines.train.progress",
    **dict.fromkeys(("WorkerSpec", "export_final_model", "fit", "storage_dir"), "pipelines.train.trainer"),
    "collate_shard_batch": "pipelines.train.worker_data",
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_getattr(__name__, _HOMES, globals())
