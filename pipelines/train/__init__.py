"""Stage 2, training: the Ray Train (V2) trainer, its prepared inputs (teacher cache, saliency mask) and
the one training-job driver that `finetune`, `run` and every sweep trial go through."""

from pipelines.train.progress import sweep_callbacks
from pipelines.train.trainer import TrainJob, export_final_model, fit, storage_dir
from pipelines.train.worker_data import collate_shard_batch

__all__ = ["TrainJob", "collate_shard_batch", "export_final_model", "fit", "storage_dir", "sweep_callbacks"]
