"""One validated configuration schema, shared by the CLI, the Tune spaces and the MLflow params.

A bad value raises ``ConfigError`` naming the field (``train.lr: Input should be greater than 0``).
``flatten()`` turns a config into the dotted ``section.field`` keys that MLflow params and Tune
search spaces use; ``with_overrides()`` applies such dotted keys back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SECRET_MARKERS = ("token", "secret", "password", "api_key", "apikey", "credential")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def absolute_folder(path: str | Path) -> str:
    """Folders handed to Ray are absolute: Ray Train workers and Ray tasks run in other working
    directories, where a relative path would point elsewhere."""
    return str(Path(path).expanduser().resolve())


def local_model_spec(spec: str) -> str:
    """A model spec naming an existing local folder, made absolute; HF ids, ``tiny-llava`` and
    ``models:/`` URIs stay as they are."""
    return (
        absolute_folder(spec)
        if not spec.startswith("models:/") and Path(spec).expanduser().is_dir()
        else spec
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Strict):
    people: int = Field(40, ge=4, le=2000)
    images_per_person: int = Field(6, ge=1, le=200)
    unseen_per_person: int = Field(2, ge=1, le=50)
    forget_pct: float = Field(10.0, gt=0, lt=100)
    utility_people: int = Field(8, ge=0, le=2000)
    # Anonymous faces seen once each, for the vanilla fine-tune only (docs/data.md); 0 = none. They
    # teach the tiny model to read hats, glasses and objects off the pixels of images it never saw.
    describe_images: int = Field(5760, ge=0, le=100_000)
    image_size: int = Field(64, ge=16, le=1024)
    seed: int = 0


class ModelConfig(_Strict):
    spec: str = "tiny-llava"  # HF id, local folder, "tiny-llava", or models:/NAME@ALIAS
    lora: bool = False
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    train_vision: bool = True  # vision tower + projector trainable (LoRA or full)
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("spec")
    @classmethod
    def _local_folder_absolute(cls, v: str) -> str:
        return local_model_spec(v)


class TrainConfig(_Strict):
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    seed: int = 0
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    deepspeed_stage: Literal[0, 2, 3] = 0  # 0 = plain DDP
    bf16: bool = True  # only used on GPU
    checkpoint_every: int = Field(0, ge=0)  # 0 = only at the end
    eval_every: int = Field(0, ge=0)  # 0 = only at the end
    eval_max_samples: int = Field(64, ge=1)
    max_failures: int = Field(0, ge=-1)
    torch_threads: int = Field(0, ge=0)  # 0 = one per CPU of the worker (cpus_per_worker, at least 1)
    prefetch_batches: int = Field(2, ge=0, le=64)  # batches collated ahead in a thread (0 = off)
    # Batches of rows of similar length (less padding: 1.7x fewer tokens on the vanilla mix); each
    # stream is read into memory before the first step. Changes which rows share a batch: off, as the
    # vanilla models it trained read held objects far worse (README, eyesight).
    group_by_length: bool = False
    # Who runs the training loop (resolved by ``resolve_launcher``). ray_train: a TorchTrainer
    # (controller + num_workers worker actors). in_process: the calling process, as the one worker
    # (checkpoints, resume, retries and callbacks as under a TorchTrainer; num_workers 1, no DeepSpeed).
    # auto: in_process for one worker without DeepSpeed, else ray_train.
    launcher: Literal["auto", "ray_train", "in_process"] = "auto"
    # Vanilla fine-tune only: how many times each task's rows appear per epoch. Recognising a face
    # is learned from identity/open questions; at 1x they are 1/9 of the mix and 40 identities
    # take ~9x more steps to learn.
    task_weights: dict[str, int] = Field(default_factory=lambda: {"identity_vqa": 6, "open_vqa": 3})

    @model_validator(mode="after")
    def _launcher_fits(self) -> TrainConfig:
        if self.launcher == "in_process" and (self.num_workers > 1 or self.deepspeed_stage):
            raise ValueError(
                f"launcher=in_process runs one worker without DeepSpeed (num_workers={self.num_workers}, "
                f"deepspeed_stage={self.deepspeed_stage}); use launcher=ray_train or auto"
            )
        return self

    @field_validator("task_weights")
    @classmethod
    def _known_tasks(cls, v: dict[str, int]) -> dict[str, int]:
        from unlearn_core.data.schema import TASKS

        bad = [k for k in v if k not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; valid: {list(TASKS)}")
        if any(not isinstance(n, int) or n < 0 or n > 100 for n in v.values()):
            raise ValueError("weights must be integers in [0, 100]")
        return v


def resolve_launcher(train: TrainConfig) -> Literal["ray_train", "in_process"]:
    """Who runs the training loop: ``train.launcher``, where ``auto`` is ``in_process`` for one worker
    without DeepSpeed (Ray Train's controller, worker and dataset actors would add only start-up time;
    the weights are the same) and ``ray_train`` otherwise. The one rule for every job: `unlearn run`,
    `finetune`, sweep trials (with ``train.num_workers`` = ``--workers-per-trial``) and `make run`."""
    if train.launcher != "auto":
        return train.launcher
    return "in_process" if train.num_workers == 1 and not train.deepspeed_stage else "ray_train"


class TrackingConfig(_Strict):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<workdir>/mlflow.db
    experiment: str = "lvlm-unlearn"
    registered_model_name: str | None = None
    log_model: bool = True


class MethodConfig(_Strict):
    name: str = "pubg"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()


class RunConfig(_Strict):
    workdir: str = Field("workdir", validate_default=True)
    records: str | None = None
    shards: str | None = None
    synth: SynthConfig = Field(default_factory=SynthConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("workdir", "records", "shards")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else absolute_folder(v)


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{prefix}{loc}: {e['msg']}")
    return "; ".join(parts)


def validate(model_cls: type[BaseModel], data: dict[str, Any], prefix: str = "") -> Any:
    """Validate ``data`` against ``model_cls``; raise ConfigError naming every bad field."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_format_errors(err, prefix)}") from None


def load_run_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    cfg = validate(RunConfig, data)
    return with_overrides(cfg, overrides or {})


def flatten(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values (``train.lr``, ``method.params.w_bg``); lists stay lists."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump().items():
        _flatten_into(out, f"{prefix}{key}", value)
    return out


def _flatten_into(out: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict):
        if not value:
            out[key] = {}
        for k, v in value.items():
            _flatten_into(out, f"{key}.{k}", v)
    else:
        out[key] = value


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted-key overrides (from the CLI or a Tune trial) and re-validate the whole config."""
    data = cfg.model_dump()
    for dotted, value in overrides.items():
        node = data
        keys = dotted.split(".")
        if keys[0] not in data:
            raise ConfigError(f"unknown config field: {dotted}")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {k!r} is a value, not a section")
        node[keys[-1]] = value
    return validate(RunConfig, data)


def with_launcher_resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``train.launcher`` resolved (``resolve_launcher``): what ran is what MLflow records."""
    return with_overrides(cfg, {"train.launcher": resolve_launcher(cfg.train)})


def mlflow_params(cfg: BaseModel) -> dict[str, str]:
    """Flattened params for MLflow with secrets removed (never log tokens or keys)."""
    params = {}
    for k, v in flatten(cfg).items():
        if any(m in k.lower() for m in SECRET_MARKERS):
            continue
        params[k] = str(v)[:500]
    return params
